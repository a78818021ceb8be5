"""Each function's `sam build` artifact imports its handler under Python 3.12 with only the layers
the template gives it, unpacked into one /opt in their order as Lambda does, over the runtime's
boto3/botocore: a function that needs a package its layers lack fails here, not in AWS.

Only the functions that call a provider or verify its signatures carry the payments layer, and
no handler imports a provider SDK at start: a provider module (and its SDK) is imported on first
use of that provider. The core layer holds no provider SDK (tools/check_layer.py, run by
`make build`, checks the same on every build).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from billing.payments.providers import METHODS

from local.template import Template
from tests.support.runtime import python312, runtime_packages
from tools import check_layer

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / ".aws-sam" / "build"
TEMPLATE = Template(ROOT / "infra" / "template.yaml")
SDKS = ("stripe", "requests", "cryptography")
PAYMENTS_LAYER = "PaymentsLayer"

# Imports `app` like the Lambda runtime, then reports what that loaded and what the artifact can
# reach at all; then it imports the given modules (a first payment's imports).
PROBE = """
import importlib.util, json, sys
sys.path[:0] = {paths!r}
import app
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({sdks!r}))
boto3 = "boto3" in sys.modules
reachable = sorted(s for s in {sdks!r} if importlib.util.find_spec(s) is not None)
for statement in {first_use!r}:
    exec(statement)
print(json.dumps({{"loaded": loaded, "reachable": reachable, "boto3": boto3}}))
"""


def _first_use_imports() -> tuple[str, ...]:
    """Every import statement the provider modules run on first use (inside their functions),
    after the provider modules themselves."""
    statements = {f"import billing.payments.providers.{method}" for method in METHODS}
    providers = ROOT / "layers" / "common" / "billing" / "payments" / "providers"
    for source in providers.glob("*.py"):
        for function in ast.walk(ast.parse(source.read_text())):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    statements.add(ast.unparse(node))
    return tuple(sorted(statements))


FIRST_USE = _first_use_imports()


def _layers(function_id: str) -> list[str]:
    """The function's layers' logical ids, Globals' first (SAM appends the function's own)."""
    layers = TEMPLATE.function_properties(function_id).get("Layers") or []
    return [str(layer["Ref"]) for layer in layers]


FUNCTIONS = {function_id: _layers(function_id) for function_id in TEMPLATE.function_ids()}


@pytest.fixture(scope="module")
def opt(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], Path]:
    """/opt/python for each set of layers a function has: the built layers unpacked in order."""
    merged: dict[tuple[str, ...], Path] = {}
    for layers in {tuple(layers) for layers in FUNCTIONS.values()}:
        target = tmp_path_factory.mktemp("opt") / "python"
        target.mkdir()
        for layer in layers:
            built = BUILD / layer / "python"
            if not built.is_dir():
                pytest.fail(f"no {built}: run `make build` (make test does)")
            shutil.copytree(built, target, symlinks=True, dirs_exist_ok=True)
        merged[layers] = target
    return merged


def _probe(artifact: Path, opt_python: Path, first_use: tuple[str, ...]) -> dict[str, Any]:
    paths = [str(artifact), str(opt_python), str(runtime_packages())]
    done = subprocess.run(
        [
            python312(),
            "-I",
            "-S",
            "-B",
            "-c",
            PROBE.format(paths=paths, sdks=SDKS, first_use=first_use),
        ],
        env={"PATH": "/usr/bin:/bin", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_every_function_has_the_core_layer_first() -> None:
    assert FUNCTIONS
    for function_id, layers in FUNCTIONS.items():
        assert layers[:1] == ["CommonLayer"], function_id


@pytest.mark.parametrize("function_id", sorted(FUNCTIONS))
def test_the_handler_imports_with_only_its_own_layers_and_no_provider_sdk_at_start(
    function_id: str, opt: dict[tuple[str, ...], Path]
) -> None:
    artifact = BUILD / function_id
    if not (artifact / "app.py").is_file():
        pytest.fail(f"no {artifact}/app.py: run `make build` (make test does)")
    layers = FUNCTIONS[function_id]
    pays = PAYMENTS_LAYER in layers
    result = _probe(artifact, opt[tuple(layers)], FIRST_USE if pays else ())
    assert result["loaded"] == [], f"{function_id} imports {result['loaded']} at start"
    # Clients come from botocore (PynamoDB) or boto3 on first use: boto3's own import (about
    # 20 ms, s3transfer and all) is no part of a cold start.
    assert result["boto3"] is False, f"{function_id} imports boto3 at start"
    # With the payments layer everything a provider imports on first use imports; without it no
    # SDK is even there.
    assert result["reachable"] == (sorted(SDKS) if pays else [])


def test_a_function_without_the_payments_layer_cannot_load_a_provider(
    opt: dict[tuple[str, ...], Path],
) -> None:
    # The probe above can fail: a function whose provider call needs the SDK breaks without it.
    artifact = BUILD / "CreateCheckoutFunction"
    with pytest.raises(AssertionError, match=r"No module named '(stripe|requests|cryptography)'"):
        _probe(artifact, opt[("CommonLayer",)], FIRST_USE)


def test_the_first_use_imports_are_found() -> None:
    # What the probe imports for a provider includes each SDK the provider modules defer.
    assert {
        "import stripe",
        "import requests",
        "from cryptography.hazmat.primitives import serialization",
    } <= set(FIRST_USE)


def test_the_built_layers_pass_the_layer_check() -> None:
    # The core layer holds no stripe/requests/cryptography and is within its 15 MB; the two
    # layers share no distribution and together meet every requirement of what they ship.
    assert check_layer.check(BUILD) == []
    core = BUILD / "CommonLayer" / "python"
    assert not any((core / sdk).exists() for sdk in SDKS)
