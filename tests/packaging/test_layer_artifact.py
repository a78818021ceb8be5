"""The built layers (`make build`, which `make test` runs first) import from their bytecode alone
under Python 3.12: Lambda mounts them read-only at /opt, so a module whose pyc is missing, stale
or for another Python would be compiled from source at every cold start."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.runtime import python312, runtime_packages

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / ".aws-sam" / "build"
# Unpacked into one /opt in the order a payments function lists them (core first).
LAYERS = ("CommonLayer", "PaymentsLayer")
# What the handlers import from the layers, the provider SDKs included
IMPORTS = (
    "billing.http, billing.settings, billing.errors, billing.auth, billing.payments.webhooks, "
    "billing.payments.providers.stripe, billing.payments.providers.epay, "
    "billing.payments.providers.creem, billing.payments.providers.waffo, stripe, requests, "
    "cryptography.hazmat.primitives.serialization, pydantic, aws_lambda_powertools.event_handler"
)
POISON = "raise RuntimeError('compiled from source: ' + __name__)\n"


@pytest.fixture(scope="module")
def poisoned_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built layers whose every source file raises if Python ever reads it."""
    if not all((BUILD / layer / "python").is_dir() for layer in LAYERS):
        pytest.fail("no built layers in .aws-sam/build: run `make build` (make test does)")
    copy = tmp_path_factory.mktemp("layer") / "python"
    for layer in LAYERS:
        shutil.copytree(BUILD / layer / "python", copy, symlinks=True, dirs_exist_ok=True)
    for source in copy.rglob("*.py"):
        source.write_text(POISON)
    return copy


def _import(layer: Path, statement: str) -> subprocess.CompletedProcess[str]:
    # Isolated (-I -S: no site-packages, no PYTHONPATH) and writing no bytecode (-B), as on
    # Lambda: the layers, then the runtime's boto3/botocore with their dependencies.
    paths = [str(layer), str(runtime_packages())]
    return subprocess.run(
        [python312(), "-I", "-S", "-B", "-c", f"import sys; sys.path[:0] = {paths!r}; {statement}"],
        env={"PATH": "/usr/bin:/bin", "AWS_REGION": "us-east-1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_layer_imports_without_reading_a_source_file(poisoned_layer: Path) -> None:
    done = _import(poisoned_layer, f"import {IMPORTS}")
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_module_without_its_bytecode_would_be_compiled_from_source(
    poisoned_layer: Path,
) -> None:
    # The check above can fail: with one pyc gone, Python falls back to the (poisoned) source.
    pyc = next((poisoned_layer / "billing" / "__pycache__").glob("errors.cpython-312.pyc"))
    pyc.rename(pyc.with_suffix(".moved"))
    try:
        done = _import(poisoned_layer, "import billing.errors")
    finally:
        pyc.with_suffix(".moved").rename(pyc)
    assert done.returncode != 0
    assert "compiled from source: billing.errors" in done.stderr
