"""What the handlers render is what openapi.json documents: each resource, rendered through
the local stack (with grants, held quota, limits, a saved card, an auto top-up rule, codes,
a referral reward...), validates against its operation's response schema in openapi.json.

The response models are strict (billing.api_models, extra="forbid" → additionalProperties
false), so a field a handler renders but the document lacks fails here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import requests

from tests.support.payments import (
    UNIT,
    checkout,
    post_webhook,
    session_event,
    sign,
    wait_drained,
    wait_status,
)
from tests.support.stack import ROOT, LocalStack, wait_for

METER = "MeterUsageFunction"


class Contract:
    """Validates responses against openapi.json and remembers what it saw."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = json.loads((ROOT / "openapi.json").read_text())
        self.problems: list[str] = []
        self.seen: set[tuple[str, str, int]] = set()

    def schema(self, method: str, path: str, status: int) -> dict[str, Any]:
        responses = self.document["paths"][path][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {path}: {status} is not documented"
        content = responses[str(status)]["content"]["application/json"]
        return {**content["schema"], "components": self.document["components"]}

    def check(
        self, response: requests.Response, method: str, path: str, status: int
    ) -> dict[str, Any]:
        assert response.status_code == status, (method, path, response.text)
        body: dict[str, Any] = response.json()
        errors = sorted(
            jsonschema.Draft202012Validator(self.schema(method, path, status)).iter_errors(body),
            key=lambda e: list(e.absolute_path),
        )
        for error in errors:
            where = "/".join(map(str, error.absolute_path))
            self.problems.append(f"{method} {path} {status} at /{where}: {error.message}")
        self.seen.add((method.lower(), path, status))
        return body


@pytest.fixture
def contract() -> Iterator[Contract]:
    checker = Contract()
    yield checker
    assert not checker.problems, "rendered but not in openapi.json:\n" + "\n".join(checker.problems)


def meter(stack: LocalStack, user: str, action: str, **fields: Any) -> dict[str, Any]:
    event = {
        "action": action,
        "request_id": f"req-{uuid.uuid4().hex}",
        "user_id": user,
        "model": "gpt-4o",
        "prompt_tokens": 100,
        "completion_tokens": 50,
        **fields,
    }
    result: dict[str, Any] = stack.invoke(METER, event)
    return result


def test_every_resource_as_rendered_is_in_the_document(
    stack: LocalStack, contract: Contract
) -> None:
    admin = stack.token(f"admin-{uuid.uuid4().hex[:8]}", admin=True)
    inviter = f"inviter-{uuid.uuid4().hex[:10]}"
    user = f"user-{uuid.uuid4().hex[:10]}"
    inviter_token, token = stack.token(inviter), stack.token(user)
    ok = contract.check

    # Accounts (one invited by the other), before and after it exists.
    ok(stack.request("GET", "/account", token=token), "GET", "/account", 404)
    code = ok(
        stack.request("POST", "/account", token=inviter_token, json={}), "POST", "/account", 201
    )
    created = stack.request(
        "POST", "/account", token=token, json={"referral_code": code["aff_code"]}
    )
    ok(created, "POST", "/account", 201)
    ok(stack.request("POST", "/account", token=token, json={}), "POST", "/account", 200)

    # A paid top-up (a paid grant, the inviter's rebate), then a promo grant and held quota.
    order = ok(
        stack.request(
            "POST",
            "/checkout",
            token=token,
            json={"amount": 10, "method": "stripe", "save_card": True},
        ),
        "POST",
        "/checkout",
        201,
    )
    assert stack.pay(order["order_id"]).status_code == 200
    wait_status(stack, token, order["order_id"], "paid")
    wait_drained(stack)
    adjusted = stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=admin,
        json={"delta": 1000, "reason": "promo", "grant": {"priority": 10, "expires_in_days": 5}},
    )
    ok(adjusted, "POST", "/admin/accounts/{user_id}/adjust", 200)
    assert meter(stack, user, "charge", key_id="key-1")["status"] == "charged"
    assert meter(stack, user, "reserve")["status"] == "reserved"
    shown = ok(stack.request("GET", "/account", token=token), "GET", "/account", 200)
    assert shown["held_quota"] > 0 and len(shown["grants"]) == 2

    # Lists and reports of the account.
    for path in ("/ledger", "/usage", "/grants", "/topups", "/usage/summary"):
        ok(stack.request("GET", path, token=token), "GET", path, 200)
    ok(
        stack.request("GET", "/usage/summary?group_by=key", token=token),
        "GET",
        "/usage/summary",
        200,
    )
    ok(
        stack.request("GET", f"/topups/{order['order_id']}", token=token),
        "GET",
        "/topups/{order_id}",
        200,
    )
    ok(stack.request("GET", "/topup/options", token=token), "GET", "/topup/options", 200)
    ok(stack.request("GET", "/ledger?limit=0", token=token), "GET", "/ledger", 400)

    # Spend limits.
    limit = {"max_quota": 10 * UNIT, "period": "day"}
    ok(
        stack.request("PUT", "/limits/account", token=token, json=limit),
        "PUT",
        "/limits/{scope}",
        200,
    )
    ok(stack.request("GET", "/limits", token=token), "GET", "/limits", 200)
    ok(
        stack.request("DELETE", "/limits/account", token=token),
        "DELETE",
        "/limits/{scope}",
        200,
    )
    ok(
        stack.request("GET", f"/admin/accounts/{user}/limits", token=admin),
        "GET",
        "/admin/accounts/{user_id}/limits",
        200,
    )

    # Alerts and auto top-up (the card was saved by the paid checkout).
    alerts = {"low_balance_threshold": 1000}
    ok(
        stack.request("PUT", "/account/alerts", token=token, json=alerts),
        "PUT",
        "/account/alerts",
        200,
    )
    ok(stack.request("GET", "/account/alerts", token=token), "GET", "/account/alerts", 200)
    ok(
        stack.request("GET", "/account/auto-topup", token=inviter_token),
        "GET",
        "/account/auto-topup",
        200,
    )
    rule = {"enabled": True, "threshold": 0, "amount": 10, "method": "stripe"}
    ok(
        stack.request("PUT", "/account/auto-topup", token=token, json=rule),
        "PUT",
        "/account/auto-topup",
        200,
    )
    ok(stack.request("GET", "/account/auto-topup", token=token), "GET", "/account/auto-topup", 200)

    # Redemption codes: created, listed, redeemed, disabled.
    batch = ok(
        stack.request(
            "POST",
            "/admin/redemption-codes",
            token=admin,
            json={"name": f"contract-{uuid.uuid4().hex[:6]}", "quota": 500, "count": 2},
        ),
        "POST",
        "/admin/redemption-codes",
        201,
    )
    ok(
        stack.request("POST", "/redeem", token=token, json={"code": batch["codes"][0]}),
        "POST",
        "/redeem",
        200,
    )
    ok(
        stack.request("POST", "/redeem", token=token, json={"code": batch["codes"][0]}),
        "POST",
        "/redeem",
        400,
    )

    def listed() -> list[dict[str, Any]] | None:  # the listing's index is eventually consistent
        codes = ok(
            stack.request("GET", "/admin/redemption-codes", token=admin),
            "GET",
            "/admin/redemption-codes",
            200,
        )
        found = [c for c in codes["items"] if c["batch_id"] == batch["batch_id"]]
        return found if len(found) == 2 else None

    mine = wait_for(listed, message="the batch's codes in the listing")
    ok(
        stack.request("DELETE", f"/admin/redemption-codes/{mine[0]['code_id']}", token=admin),
        "DELETE",
        "/admin/redemption-codes/{code_id}",
        200,
    )

    # The inviter's rebate, moved to the balance.
    rebated = wait_for(
        lambda: (
            (a := stack.request("GET", "/account", token=inviter_token).json())["aff_quota"] and a
        ),
        timeout=30,
        message="the inviter's rebate",
    )
    ok(
        stack.request(
            "POST", "/referral/transfer", token=inviter_token, json={"quota": rebated["aff_quota"]}
        ),
        "POST",
        "/referral/transfer",
        200,
    )

    # An order an admin completes by hand.
    pending = checkout(stack, token)
    ok(
        stack.request("POST", f"/admin/topups/{pending['order_id']}/complete", token=admin),
        "POST",
        "/admin/topups/{order_id}/complete",
        200,
    )

    # Usage that could not be billed, kept for an admin.
    assert meter(stack, user, "charge", model="no-such-model")["status"] == "rejected"
    ok(
        stack.request("GET", "/admin/unbilled-usage", token=admin),
        "GET",
        "/admin/unbilled-usage",
        200,
    )

    # A payment webhook, acknowledged and refused.
    event = session_event(order, payment_intent=f"pi_{uuid.uuid4().hex[:20]}")
    ok(post_webhook(stack, event, sign(event)), "POST", "/webhooks/stripe", 200)
    ok(post_webhook(stack, event, sign(event, secret="forged")), "POST", "/webhooks/stripe", 400)

    # Refusals: a non-admin on an admin route, no token.
    ok(
        stack.request("GET", "/admin/redemption-codes", token=token),
        "GET",
        "/admin/redemption-codes",
        403,
    )
    ok(stack.request("GET", "/account"), "GET", "/account", 401)


def test_the_schemas_refuse_a_field_they_do_not_name(contract: Contract) -> None:
    """The guard above can fail: an undeclared field is refused, at the top and nested."""
    schema = contract.schema("GET", "/account", 200)
    account = {
        "user_id": "u",
        "quota": 0,
        "used_quota": 0,
        "request_count": 0,
        "held_quota": 0,
        "aff_code": "c",
        "aff_quota": 0,
        "aff_history_quota": 0,
        "aff_count": 0,
        "inviter_id": None,
        "status": "active",
        "created_at": "2024-01-01T00:00:00Z",
        "grants": [],
        "expiring_quota": {"quota": 0, "before": "2024-01-08T00:00:00Z"},
    }
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(account)) == []
    assert list(validator.iter_errors({**account, "undeclared": 1}))
    nested = {**account, "expiring_quota": {"quota": 0, "before": "x", "undeclared": 1}}
    assert list(validator.iter_errors(nested))
