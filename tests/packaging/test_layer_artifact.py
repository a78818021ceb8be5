"""The built common layer (`make build`, which `make test` runs first) imports from its bytecode
alone under Python 3.12: Lambda mounts it read-only at /opt, so a module whose pyc is missing,
stale or for another Python would be compiled from source at every cold start."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.runtime import python312

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / ".aws-sam" / "build" / "CommonLayer" / "python"
# What the HTTP handlers import from the layer (pynamodb needs the runtime's botocore, absent here)
IMPORTS = (
    "billing.http, billing.settings, billing.errors, billing.auth, billing.payments.webhooks, "
    "billing.payments.providers.stripe, billing.payments.providers.epay, "
    "billing.payments.providers.creem, billing.payments.providers.waffo, stripe, requests, "
    "cryptography.hazmat.primitives.serialization, pydantic, aws_lambda_powertools.event_handler"
)
POISON = "raise RuntimeError('compiled from source: ' + __name__)\n"


@pytest.fixture(scope="module")
def poisoned_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built layer whose every source file raises if Python ever reads it."""
    if not (LAYER / "billing").is_dir():
        pytest.fail("no built layer in .aws-sam/build: run `make build` (make test does)")
    copy = tmp_path_factory.mktemp("layer") / "python"
    shutil.copytree(LAYER, copy, symlinks=True)
    for source in copy.rglob("*.py"):
        source.write_text(POISON)
    return copy


def _import(layer: Path, statement: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python312(), "-s", "-c", f"import sys; sys.path[:0] = [{str(layer)!r}]; {statement}"],
        env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "AWS_REGION": "us-east-1"},
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
