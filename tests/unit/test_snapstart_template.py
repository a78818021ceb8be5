"""SnapStart in the template: the user-facing functions publish a version behind the alias `live`
with SnapStart on it (off with the SnapStart parameter); the local stack resolves what SAM
makes of AutoPublishAlias (`!Ref <Fn>.Alias`, `<Fn>.Version`, the generated `<Fn>Alias<alias>`)
and refuses it for a function that has none, as SAM does."""

from __future__ import annotations

import pytest

from local.template import ACCOUNT_ID, REGION, Template, TemplateError
from tests.support.stack import ROOT

TEMPLATE = ROOT / "infra" / "template.yaml"
USER_FACING = {
    "AccountFunction",
    "AdminFunction",
    "AdminCodesFunction",
    "CreateCheckoutFunction",
    "RedeemCodeFunction",
    "ReferralTransferFunction",
}


def _snapstart(template: Template) -> dict[str, object]:
    return {
        fn: template.resolve(template.function_properties(fn).get("SnapStart"))
        for fn in template.function_ids()
    }


def test_the_user_facing_functions_publish_an_alias_with_snapstart() -> None:
    template = Template(TEMPLATE)
    aliased = {
        fn
        for fn in template.function_ids()
        if template.function_properties(fn).get("AutoPublishAlias")
    }
    assert aliased == USER_FACING
    assert all(template.function_properties(fn)["AutoPublishAlias"] == "live" for fn in aliased)
    snapstart = _snapstart(template)
    assert {fn for fn, value in snapstart.items() if value} == USER_FACING
    assert all(snapstart[fn] == {"ApplyOn": "PublishedVersions"} for fn in USER_FACING)


def test_the_snapstart_parameter_turns_it_off() -> None:
    template = Template(TEMPLATE, {"SnapStart": "off"})
    snapstart = _snapstart(template)
    assert all(snapstart[fn] == {"ApplyOn": "None"} for fn in USER_FACING)


def test_refs_to_the_alias_and_version_resolve_locally() -> None:
    template = Template(TEMPLATE)
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:AccountFunction"
    assert template.resolve({"Ref": "AccountFunction.Alias"}) == f"{arn}:live"
    assert template.resolve({"Ref": "AccountFunctionAliaslive"}) == f"{arn}:live"
    assert template.resolve({"Ref": "AccountFunction.Version"}) == f"{arn}:1"
    assert template.resolve({"Ref": "AccountFunction"}) == "AccountFunction"


def test_a_ref_to_the_alias_of_a_function_without_one_is_refused() -> None:
    template = Template(TEMPLATE)
    with pytest.raises(TemplateError, match="MeterUsageFunction has no AutoPublishAlias"):
        template.resolve({"Ref": "MeterUsageFunction.Alias"})
    with pytest.raises(TemplateError, match="unknown parameter or resource"):
        template.resolve({"Ref": "AccountFunctionAliasother"})
