"""Check the built layers (.aws-sam/build/<Layer>/python, after `make build`). Exit 1 otherwise.

- CommonLayer, the core layer every function carries: holds the billing package, no provider
  SDK (stripe, requests, cryptography: those are PaymentsLayer's) and at most 15 MB unzipped.
- PaymentsLayer: the provider SDKs and nothing of the domain.
- Neither ships what the Lambda runtime has (boto3, botocore and botocore's dependencies), and
  no distribution is in both: Lambda unpacks a function's layers into one /opt, the later
  overwriting the earlier file by file, so two versions of one package would be mixed.
- Every requirement of every distribution they ship is met by the two layers and the runtime.
- Both ship 3.12 bytecode for every module (hash-based, unchecked: /opt is read-only, so Lambda
  could neither write nor refresh a pyc), and together fit Lambda's 250 MB unzipped limit.
- Every function's artifact (a built directory with an app.py) ships that bytecode too:
  /var/task is read-only as well.
Prints each layer's size.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / ".aws-sam" / "build"
# The Lambda runtime's boto3 with its dependency closure (what layers/*/Makefile drop).
RUNTIME_PROVIDED = frozenset(
    {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"}
)
PROVIDER_SDKS = frozenset({"stripe", "requests", "cryptography"})
CORE_LIMIT_BYTES = 15 * 1000 * 1000  # issue 20: the core layer at most 15 MB unzipped
LAMBDA_LIMIT_BYTES = 250 * 1024 * 1024  # Lambda: function + layers, unzipped
PYC_TAG = "cpython-312"
UNCHECKED_HASH_FLAGS = 0b01  # PEP 552: hash-based, check_source bit clear
# Markers evaluated as on the functions' runtime (python3.12, x86_64 Linux).
RUNTIME_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}


@dataclass(frozen=True)
class Layer:
    logical_id: str
    must_hold: str  # a path inside python/ the layer must ship ("" for none)
    forbidden: frozenset[str]  # distributions it must not ship (canonical names)
    limit_bytes: int | None = None

    def path(self, build: Path = BUILD) -> Path:
        return build / self.logical_id / "python"


CORE = Layer("CommonLayer", "billing/ledger.py", RUNTIME_PROVIDED | PROVIDER_SDKS, CORE_LIMIT_BYTES)
PAYMENTS = Layer("PaymentsLayer", "", RUNTIME_PROVIDED)
LAYERS = (CORE, PAYMENTS)


def modules_without_bytecode(layer: Path) -> list[str]:
    """Source modules that have no unchecked-hash 3.12 pyc next to them."""
    missing = []
    for source in layer.rglob("*.py"):
        pyc = source.parent / "__pycache__" / f"{source.stem}.{PYC_TAG}.pyc"
        header = pyc.read_bytes()[:8] if pyc.is_file() else b""
        if len(header) < 8 or int.from_bytes(header[4:8], "little") != UNCHECKED_HASH_FLAGS:
            missing.append(str(source.relative_to(layer)))
    return sorted(missing)


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def distributions(layer: Path) -> dict[str, metadata.Distribution]:
    """The distributions a built layer ships, by canonical name."""
    return {
        canonicalize_name(dist.metadata["Name"]): dist
        for dist in metadata.distributions(path=[str(layer)])
    }


def top_level_names(layer: Path) -> set[str]:
    """What a layer ships at its top, as import names (packages and modules)."""
    return {p.name.split("-")[0].removesuffix(".py").lower() for p in layer.iterdir()}


def unmet_requirements(shipped: dict[str, metadata.Distribution], available: set[str]) -> list[str]:
    """Requirements (on the runtime) of the shipped distributions that nothing provides."""
    unmet = []
    for name, dist in sorted(shipped.items()):
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(RUNTIME_MARKERS):
                continue
            needed = canonicalize_name(requirement.name)
            if needed in available:
                found = shipped.get(needed)
                if found is not None and not requirement.specifier.contains(
                    found.version, prereleases=True
                ):
                    unmet.append(f"{name} needs {requirement}, the layers ship {found.version}")
                continue
            unmet.append(f"{name} needs {requirement}, which no layer nor the runtime ships")
    return unmet


def check(build: Path = BUILD) -> list[str]:
    """Every problem with the layers built in `build` (none when they are fit to deploy)."""
    problems: list[str] = []
    for layer in LAYERS:
        if not layer.path(build).is_dir() or (
            layer.must_hold and not (layer.path(build) / layer.must_hold).is_file()
        ):
            return [f"{layer.path(build)} is missing or incomplete: run `make build`"]
    shipped = {layer.logical_id: distributions(layer.path(build)) for layer in LAYERS}
    total = 0
    for layer in LAYERS:
        layer_bytes = size(layer.path(build))
        total += layer_bytes
        count = len(shipped[layer.logical_id])
        print(f"{layer.logical_id}: {layer_bytes / 1e6:.1f} MB unzipped, {count} distributions")
        names = set(shipped[layer.logical_id]) | {
            canonicalize_name(n) for n in top_level_names(layer.path(build))
        }
        if names & layer.forbidden:
            problems.append(f"{layer.logical_id} ships {sorted(names & layer.forbidden)}")
        if layer.limit_bytes is not None and layer_bytes > layer.limit_bytes:
            problems.append(
                f"{layer.logical_id} is {layer_bytes / 1e6:.1f} MB unzipped, over its "
                f"{layer.limit_bytes / 1e6:.0f} MB budget"
            )
        missing = modules_without_bytecode(layer.path(build))
        if missing:
            problems.append(
                f"{layer.logical_id}: {len(missing)} modules lack unchecked-hash {PYC_TAG} "
                f"bytecode, e.g. {missing[:3]}"
            )
    for function in sorted(app.parent for app in build.glob("*/app.py")):
        missing = modules_without_bytecode(function)
        if missing:
            problems.append(
                f"{function.name}: {len(missing)} modules lack unchecked-hash {PYC_TAG} "
                f"bytecode, e.g. {missing[:3]}"
            )
    if (PAYMENTS.path(build) / "billing").exists():
        problems.append("PaymentsLayer ships the billing package (the core layer has it)")
    both = set(shipped[CORE.logical_id]) & set(shipped[PAYMENTS.logical_id])
    if both:
        problems.append(f"both layers ship {sorted(both)}: one /opt would mix their files")
    everything = {**shipped[CORE.logical_id], **shipped[PAYMENTS.logical_id]}
    problems += unmet_requirements(everything, set(everything) | RUNTIME_PROVIDED)
    if total > LAMBDA_LIMIT_BYTES:
        problems.append("the layers are over Lambda's 250 MB unzipped limit")
    return problems


def main() -> int:
    problems = check()
    for problem in problems:
        print(f"check_layer: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
