"""infra/template.yaml: only the functions that redeem or administer redemption codes hold the
code hash key or write to the codes table (the admin routes of accounts, limits, top-ups and
unbilled usage live in AdminFunction, which holds neither)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from local.template import load_yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "template.yaml"
WRITES = {
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
}
CODE_FUNCTIONS = {"AdminCodesFunction", "RedeemCodeFunction"}


def statements(props: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for policy in props.get("Policies", []):
        if isinstance(policy, dict):
            found += policy.get("Statement", [])
    return found


def names(resource: Any) -> set[str]:
    """The logical ids a policy resource refers to (Ref, GetAtt, or inside a Sub)."""
    refs: set[str] = set()
    for item in resource if isinstance(resource, list) else [resource]:
        if isinstance(item, dict):
            if "Ref" in item:
                refs.add(item["Ref"])
            if "Fn::GetAtt" in item:
                refs.add(item["Fn::GetAtt"][0])
            if "Fn::Sub" in item and isinstance(item["Fn::Sub"], str):
                parts = item["Fn::Sub"].split("${")[1:]
                refs |= {part.split("}")[0].split(".")[0] for part in parts}
    return refs


def holders(predicate: Any) -> set[str]:
    resources = load_yaml(TEMPLATE)["Resources"]
    return {
        name
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Serverless::Function"
        and any(predicate(s) for s in statements(resource["Properties"]))
    }


def test_only_redemption_and_code_administration_hold_the_code_hash_key() -> None:
    assert holders(lambda s: "CodeHashSecret" in names(s.get("Resource"))) == CODE_FUNCTIONS


def test_only_redemption_and_code_administration_write_codes() -> None:
    def writes_codes(statement: dict[str, Any]) -> bool:
        actions = statement.get("Action")
        actions = set(actions if isinstance(actions, list) else [actions])
        return bool(actions & WRITES) and "RedemptionCodesTable" in names(statement.get("Resource"))

    assert holders(writes_codes) == CODE_FUNCTIONS
