"""The layers ship exactly the runtime dependencies pyproject pins, split by need: the core layer
(layers/common) everything every function imports, the payments layer (layers/payments) the
provider SDKs; neither ships boto3, and only the functions that call a provider carry the
payments layer."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from local.template import load_yaml

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_SDKS = {"stripe", "requests", "cryptography"}


def _requirements(layer: str) -> list[str]:
    lines = (ROOT / "layers" / layer / "requirements.txt").read_text().splitlines()
    return sorted(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def _name(requirement: str) -> str:
    return requirement.split("==")[0].split("[")[0].lower()


def test_the_layers_together_ship_exactly_what_pyproject_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core, payments = _requirements("common"), _requirements("payments")
    assert sorted(core + payments) == sorted(project["dependencies"])
    assert not {_name(r) for r in core} & {_name(r) for r in payments}


def test_the_core_layer_has_no_provider_sdk_and_the_payments_layer_only_them() -> None:
    assert not {_name(r) for r in _requirements("common")} & PROVIDER_SDKS
    assert {_name(r) for r in _requirements("payments")} == PROVIDER_SDKS


def test_every_dependency_is_pinned_and_boto3_is_not_shipped() -> None:
    for requirement in _requirements("common") + _requirements("payments"):
        assert "==" in requirement, requirement
        assert _name(requirement) not in {"boto3", "botocore"}, "the Lambda runtime provides boto3"


def test_the_core_layer_is_global_and_the_payments_layer_only_where_a_provider_is_called() -> None:
    template = load_yaml(ROOT / "infra" / "template.yaml")
    assert template["Globals"]["Function"]["Layers"] == [{"Ref": "CommonLayer"}]
    with_payments = {
        logical_id
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
        and {"Ref": "PaymentsLayer"} in (resource["Properties"].get("Layers") or [])
    }
    # Checkout creates provider payments; the webhook verifies provider signatures; auto top-up
    # reads the saved card (account routes) and charges it off-session (billing events), both by
    # Stripe. Crediting, refunds and disputes work from the verified events on the queue, never
    # a provider API.
    assert with_payments == {
        "CreateCheckoutFunction",
        "PaymentWebhookFunction",
        "AccountFunction",
        "BillingEventsFunction",
    }


def test_every_function_has_a_handler_and_a_sample_event() -> None:
    events = {path.stem for path in (ROOT / "events").glob("*.json")}
    for function_dir in sorted((ROOT / "functions").iterdir()):
        assert (function_dir / "app.py").exists(), function_dir
        assert any(name.startswith(function_dir.name) for name in events), (
            f"events/ has no sample event for {function_dir.name}"
        )


def test_no_function_imports_what_the_core_layer_leaves_out() -> None:
    # layers/common/Makefile drops Powertools utilities no function uses and pydantic's V1 copy;
    # every import of ours (at start or deferred) must stay clear of them. The local stack runs
    # the functions over the same pruned build, so a use the parse misses fails there too.
    makefile = (ROOT / "layers" / "common" / "Makefile").read_text()
    unused = re.search(r"^UNUSED_POWERTOOLS := (.+)$", makefile, re.MULTILINE)
    assert unused is not None
    left_out = [f"aws_lambda_powertools.utilities.{name}" for name in unused.group(1).split()]
    left_out += ["pydantic.v1", "pydantic.mypy"]
    sources = [*(ROOT / "functions").rglob("*.py"), *(ROOT / "layers" / "common").rglob("*.py")]
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [f"{node.module}.{alias.name}" for alias in node.names]
                if isinstance(node, ast.ImportFrom) and node.module
                else []
            )
            for name in names:
                assert not any(name == m or name.startswith(m + ".") for m in left_out), (
                    f"{source.relative_to(ROOT)} imports {name}, which the core layer leaves out"
                )
