"""The Lambda runtime the workers run: the template's Python, the layers' dependencies as the
layer build installs them for it, and the boto3/botocore the Lambda runtime ships.

Not the dev venv: a function must fail here when it imports something its layer does not
ship, or uses syntax or a library build its runtime lacks. Per function:
- the interpreter of its Runtime (python3.12: $PYTHON312, python3.12 on PATH, or pyenv's),
  started isolated (-I -S: no site-packages, no PYTHONPATH, no user site);
- for each layer whose ContentUri holds a requirements.txt: that layer built once with its
  own Makefile (``make build-<LogicalId>``, as sam build does for BuildMethod: makefile) or,
  without one, ``pip install -r requirements.txt --target``, for that interpreter. What the
  layer ships from its own source (the billing package) is dropped from the built copy: the
  source directory comes first on sys.path, so an edit is seen at the next worker start;
- boto3 and botocore, at the versions pyproject.toml pins for development, in a directory
  of their own after the layers (where the Lambda runtime keeps them).

Built directories are cached under .lambda-runtime/ (gitignored), keyed by a hash of what
went into them; ``make dev`` and ``make test`` build them first (``python -m
local.python_runtime``). Concurrent starts wait on a lock file and build once.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

CACHE = ".lambda-runtime"
_RUNTIME = re.compile(r"^python(\d+)\.(\d+)$")
_BUILD_TARGET = re.compile(r"^build-([A-Za-z0-9]+):", re.MULTILINE)
_RUNTIME_PACKAGES = ("boto3", "botocore")


class RuntimeUnavailable(RuntimeError):
    """The template's runtime cannot be prepared on this machine."""


@dataclass(frozen=True)
class PreparedRuntime:
    interpreter: str
    runtime_dir: Path  # boto3/botocore, as the Lambda runtime ships them
    layer_deps: dict[Path, Path] = field(default_factory=dict)  # layer dir -> its built deps

    def layer_paths(self, layer_dirs: tuple[Path, ...]) -> list[str]:
        """sys.path entries for a function's layers: each source dir, then what it built."""
        paths: list[str] = []
        for layer in layer_dirs:
            paths.append(str(layer))
            if layer in self.layer_deps:
                paths.append(str(self.layer_deps[layer]))
        return paths


def interpreter_for(runtime: str, environ: Mapping[str, str]) -> str:
    """An interpreter of this Lambda runtime (e.g. python3.12) on this machine."""
    match = _RUNTIME.match(runtime)
    if not match:
        raise RuntimeUnavailable(f"runtime {runtime!r} is not a Python runtime")
    major, minor = match.groups()
    candidates = [
        environ.get(f"PYTHON{major}{minor}", ""),
        shutil.which(f"python{major}.{minor}") or "",
        *sorted(
            glob.glob(
                os.path.expanduser(f"~/.pyenv/versions/{major}.{minor}.*/bin/python{major}.{minor}")
            )
        ),
    ]
    for candidate in filter(None, candidates):
        if _version(candidate) == (int(major), int(minor)):
            return candidate
    raise RuntimeUnavailable(
        f"the functions' runtime is {runtime}, and no {runtime} was found ($PYTHON{major}{minor}, "
        f"python{major}.{minor} on PATH, ~/.pyenv/versions/{major}.{minor}.*): install it (e.g. "
        f"pyenv install {major}.{minor})"
    )


def _version(interpreter: str) -> tuple[int, int] | None:
    try:
        probe = subprocess.run(  # noqa: S603 - an interpreter this machine has
            [interpreter, "-I", "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except OSError:
        return None
    parts = probe.stdout.split()
    return (int(parts[0]), int(parts[1])) if probe.returncode == 0 and len(parts) == 2 else None


def runtime_pins(root: Path) -> list[str]:
    """boto3/botocore as pyproject.toml pins them (the versions the project is tested with)."""
    document = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    requirements = [
        *document.get("project", {}).get("dependencies", []),
        *document.get("project", {}).get("optional-dependencies", {}).get("dev", []),
    ]
    pins = []
    for package in _RUNTIME_PACKAGES:
        pinned = [r for r in requirements if re.match(rf"^{package}==[\w.]+$", r.strip())]
        if not pinned:
            raise RuntimeUnavailable(f"pyproject.toml pins no {package}==X (the runtime's copy)")
        pins.append(pinned[0].strip())
    return pins


def prepare(
    root: Path,
    runtime: str,
    layer_dirs: list[Path],
    environ: Mapping[str, str],
    say: Callable[[str], None] = lambda _: None,
) -> PreparedRuntime:
    interpreter = interpreter_for(runtime, environ)
    cache = root / CACHE
    cache.mkdir(exist_ok=True)
    with _locked(cache / ".lock"):
        pins = runtime_pins(root)
        runtime_dir = _cached(
            cache,
            f"{runtime}-runtime",
            [interpreter, *pins],
            lambda target: _pip(interpreter, target, pins),
            say,
        )
        deps: dict[Path, Path] = {}
        for layer in dict.fromkeys(layer_dirs):
            requirements = layer / "requirements.txt"
            if not requirements.is_file():
                continue
            makefile = layer / "Makefile"
            inputs = [interpreter, requirements.read_text(encoding="utf-8")]
            if makefile.is_file():
                inputs.append(makefile.read_text(encoding="utf-8"))
            built = _cached(
                cache,
                f"{runtime}-layer-{layer.name}",
                inputs,
                functools.partial(_build_layer, interpreter, layer),
                say,
            )
            deps[layer] = built
    return PreparedRuntime(interpreter, runtime_dir, deps)


def _cached(
    cache: Path,
    label: str,
    inputs: list[str],
    build: Callable[[Path], None],
    say: Callable[[str], None],
) -> Path:
    digest = hashlib.sha256("\0".join([_interpreter_id(inputs[0]), *inputs[1:]]).encode())
    final = cache / f"{label}-{digest.hexdigest()[:16]}"
    if final.is_dir():
        return final
    say(f"building {final.name} for the Lambda runtime (once; cached in {CACHE}/)")
    scratch = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=cache))
    scratch.chmod(0o755)
    try:
        build(scratch)
        scratch.rename(final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def _interpreter_id(interpreter: str) -> str:
    probe = subprocess.run(  # noqa: S603 - an interpreter this machine has
        [interpreter, "-I", "-c", "import sys, platform; print(sys.version, platform.machine())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return probe.stdout.strip()


def _pip(interpreter: str, target: Path, requirements: list[str]) -> None:
    _run(
        [
            interpreter,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--target",
            str(target),
            *requirements,
        ]
    )
    _run([interpreter, "-m", "compileall", "-q", "-j", "0", str(target)])


def _build_layer(interpreter: str, layer: Path, target: Path) -> None:
    makefile = layer / "Makefile"
    targets = (
        _BUILD_TARGET.findall(makefile.read_text(encoding="utf-8")) if makefile.is_file() else []
    )
    if targets:
        # Exactly what sam build runs for BuildMethod: makefile.
        _run(
            [
                "make",
                "-s",
                "-C",
                str(layer),
                f"build-{targets[0]}",
                f"ARTIFACTS_DIR={target}",
                f"PYTHON={interpreter}",
            ]
        )
    else:
        _pip(interpreter, target / "python", ["-r", str(layer / "requirements.txt")])
    built = target / "python"
    # The layer's own code runs from its source directory (first on sys.path), not a copy.
    for entry in layer.iterdir():
        copy = built / entry.name
        if entry.name not in ("requirements.txt", "Makefile") and copy.exists():
            shutil.rmtree(copy) if copy.is_dir() else copy.unlink()
    for name in os.listdir(target):
        if name != "python":
            path = target / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for item in os.listdir(built):
        (built / item).rename(target / item)
    built.rmdir()


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeUnavailable(
            f"{' '.join(command[:4])} ... failed ({result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-3000:]}"
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    """Build the runtime of a template's functions ahead of time (make dev / make test)."""
    import argparse

    from local.stack import parameter_overrides
    from local.template import Template, find_project_root

    parser = argparse.ArgumentParser(prog="python -m local.python_runtime")
    parser.add_argument("--template", type=Path, default=Path("infra/template.yaml"))
    args = parser.parse_args(argv)
    template = Template(args.template.resolve(), parameter_overrides(0, os.environ))
    root = find_project_root(template.dir)
    runtimes: dict[str, list[Path]] = {}
    for function_id in template.function_ids():
        props = template.function_properties(function_id)
        runtime = str(template.resolve(props.get("Runtime", "python3.12")))
        layers = runtimes.setdefault(runtime, [])
        layers += list(template._layer_dirs(function_id, props.get("Layers") or []))
    try:
        for runtime, layers in runtimes.items():
            prepared = prepare(root, runtime, layers, os.environ, print)
            print(
                f"{runtime}: {prepared.interpreter}; {prepared.runtime_dir.name}; "
                + ", ".join(p.name for p in prepared.layer_deps.values())
            )
    except RuntimeUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
