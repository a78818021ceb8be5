"""Accounts over HTTP on the local stack: creation once, reading, ledger, auth and bad input."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import LocalStack

EVENTS = Path(__file__).resolve().parents[2] / "events"


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def account_item(stack: LocalStack, user_id: str) -> dict[str, Any] | None:
    tables = stack.health()["tables"]
    client = stack.boto3_client("dynamodb")
    found = client.get_item(
        TableName=tables["AccountsTable"], Key={"user_id": {"S": user_id}}, ConsistentRead=True
    )
    return found.get("Item")


def test_create_then_read_account(stack: LocalStack) -> None:
    user = new_user()
    token = stack.token(user)
    missing = stack.request("GET", "/account", token=token)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "account_not_found"

    created = stack.request("POST", "/account", token=token, json={})
    assert created.status_code == 201
    body = created.json()
    assert body["user_id"] == user
    assert body["quota"] == 0 and body["aff_quota"] == 0 and body["inviter_id"] is None
    assert len(body["aff_code"]) >= 8
    for field in ("used_quota", "request_count", "aff_history_quota", "aff_count", "created_at"):
        assert field in body

    again = stack.request("POST", "/account", token=token, json={})
    assert again.status_code == 200
    assert again.json()["aff_code"] == body["aff_code"]
    read = stack.request("GET", "/account", token=token)
    assert read.status_code == 200 and read.json() == again.json()


def test_post_account_without_a_body_creates_it(stack: LocalStack) -> None:
    response = stack.request("POST", "/account", token=stack.token(new_user()))
    assert response.status_code == 201


def test_twenty_concurrent_creates_make_one_account(stack: LocalStack) -> None:
    user = new_user()
    token = stack.token(user)

    def create(_: int) -> tuple[int, str]:
        response = stack.request("POST", "/account", token=token, json={})
        return response.status_code, response.json()["aff_code"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(create, range(20)))
    statuses = sorted(status for status, _ in results)
    assert statuses.count(201) == 1 and statuses.count(200) == 19
    assert len({code for _, code in results}) == 1
    item = account_item(stack, user)
    assert item is not None and item["aff_code"]["S"] == results[0][1]


def test_referral_code_binds_the_inviter_once(stack: LocalStack) -> None:
    inviter, invitee = new_user(), new_user()
    code = stack.request("POST", "/account", token=stack.token(inviter), json={}).json()["aff_code"]
    created = stack.request(
        "POST", "/account", token=stack.token(invitee), json={"referral_code": code.lower()}
    )
    assert created.status_code == 201 and created.json()["inviter_id"] == inviter
    assert stack.request("GET", "/account", token=stack.token(inviter)).json()["aff_count"] == 1
    # the inviter is bound at creation only: a later code is ignored
    other = stack.request("POST", "/account", token=stack.token(new_user()), json={}).json()
    later = stack.request(
        "POST", "/account", token=stack.token(invitee), json={"referral_code": other["aff_code"]}
    )
    assert later.status_code == 200 and later.json()["inviter_id"] == inviter


def test_unknown_referral_code_creates_nothing(stack: LocalStack) -> None:
    user = new_user()
    for code in ("ZZZZZZZZZZ", "not a code!", "AB"):
        response = stack.request(
            "POST", "/account", token=stack.token(user), json={"referral_code": code}
        )
        assert response.status_code == 400, code
        assert response.json()["error"]["code"] == "invalid_referral_code"
    assert account_item(stack, user) is None


@pytest.mark.parametrize("length", [65, 100, 60_000])
def test_a_referral_code_longer_than_the_field_is_an_unknown_code(
    stack: LocalStack, length: int
) -> None:
    """For a new account: 400 invalid_referral_code, nothing created (not a validation error:
    the contract's code wins). Well-formed symbols too, and a real code padded out."""
    inviter_token = stack.token(new_user())
    inviter = stack.request("POST", "/account", token=inviter_token, json={}).json()
    for code in ("A" * length, inviter["aff_code"] + "-" * (length - len(inviter["aff_code"]))):
        user = new_user()
        response = stack.request(
            "POST", "/account", token=stack.token(user), json={"referral_code": code}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_referral_code"
        assert account_item(stack, user) is None
    assert stack.request("GET", "/account", token=inviter_token).json()["aff_count"] == 0


def test_a_too_long_referral_code_is_ignored_for_an_existing_account(stack: LocalStack) -> None:
    user = new_user()
    token = stack.token(user)
    created = stack.request("POST", "/account", token=token, json={})
    assert created.status_code == 201
    for length in (65, 60_000):
        again = stack.request("POST", "/account", token=token, json={"referral_code": "Z" * length})
        assert again.status_code == 200, again.text
        assert again.json() == created.json()


@pytest.mark.parametrize(
    "body",
    [
        {"referral_code": 12345},
        {"unexpected": True},
        [],
        "x" * 70000,
        "{not json",
    ],
)
def test_invalid_bodies_are_400_and_write_nothing(stack: LocalStack, body: Any) -> None:
    user = new_user()
    raw = body if isinstance(body, str) else json.dumps(body)
    response = stack.request(
        "POST",
        "/account",
        token=stack.token(user),
        data=raw,
        headers={"content-type": "application/json"},
    )
    expected = 413 if len(raw) > 65536 else 400
    assert response.status_code == expected
    error = response.json()["error"]
    assert error["code"] in ("invalid_request", "payload_too_large") and error["message"]
    assert account_item(stack, user) is None


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer not-a-jwt",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "Basic dXNlcjpwYXNz",
    ],
)
def test_bad_tokens_are_401(stack: LocalStack, authorization: str | None) -> None:
    headers = {"authorization": authorization} if authorization else {}
    response = stack.request("GET", "/account", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}


def test_a_token_signed_by_another_key_is_401(stack: LocalStack) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        {
            "sub": "mallory",
            "iss": stack.base_url + "/_local",
            "aud": "local-console",
            "exp": 4102444800,
        },
        key,
        algorithm="RS256",
    )
    response = stack.request("GET", "/account", headers={"authorization": f"Bearer {forged}"})
    assert response.status_code == 401


def test_ledger_lists_admin_adjustments_newest_first_with_pages(stack: LocalStack) -> None:
    user = new_user()
    token = stack.token(user)
    admin = stack.token("admin-" + user, admin=True)
    stack.request("POST", "/account", token=token, json={})
    deltas = [1000, -300, 2500, -200, 50]
    for index, delta in enumerate(deltas):
        response = stack.request(
            "POST",
            f"/admin/accounts/{user}/adjust",
            token=admin,
            json={"delta": delta, "reason": f"step {index}"},
            headers={"idempotency-key": f"{user}-{index}"},
        )
        assert response.status_code == 200, response.text
    # a retried adjustment (same Idempotency-Key) applies once and answers its first result
    retry = stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=admin,
        json={"delta": 1000, "reason": "step 0"},
        headers={"idempotency-key": f"{user}-0"},
    )
    assert retry.status_code == 200 and retry.json()["quota"] == deltas[0]

    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = stack.request("GET", "/ledger" + query, token=token).json()
        assert len(page["items"]) <= 2
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [entry["delta"] for entry in seen] == list(reversed(deltas))
    assert all(entry["kind"] == "adjustment" and entry["balance"] == "quota" for entry in seen)
    assert (
        seen[0]["balance_after"]
        == sum(deltas)
        == stack.request("GET", "/account", token=token).json()["quota"]
    )


def test_ledger_paging_rejects_bad_limits_and_foreign_cursors(stack: LocalStack) -> None:
    token = stack.token(new_user())
    for query in ("?limit=0", "?limit=101", "?limit=abc", "?limit=%C2%B2", "?cursor=%%%"):
        response = stack.request("GET", "/ledger" + query, token=token)
        assert response.status_code == 400, query
    import base64

    foreign = base64.urlsafe_b64encode(
        json.dumps(
            {"user_id": {"S": "someone-else"}, "entry_id": {"S": "x"}, "seq": {"S": "1"}}
        ).encode()
    ).decode()
    assert stack.request("GET", f"/ledger?cursor={foreign}", token=token).status_code == 400


def test_admin_adjust_is_admin_only_and_validated(stack: LocalStack) -> None:
    user = new_user()
    stack.request("POST", "/account", token=stack.token(user), json={})
    path = f"/admin/accounts/{user}/adjust"
    denied = stack.request("POST", path, token=stack.token(user), json={"delta": 5, "reason": "x"})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    # refused before its body is looked at: a non-admin learns nothing about admin input
    for route in (path, "/admin/redemption-codes", "/admin/topups/ord_x/complete"):
        blind = stack.request("POST", route, token=stack.token(user), json={"bad": True})
        assert blind.status_code == 403, route
    admin = stack.token("admin-" + user, admin=True)
    for body in (
        {"delta": 1.5, "reason": "x"},
        {"delta": 0, "reason": "x"},
        {"delta": 5},
        {"delta": 5, "reason": ""},
    ):
        assert stack.request("POST", path, token=admin, json=body).status_code == 400, body
    overdraw = stack.request("POST", path, token=admin, json={"delta": -1, "reason": "x"})
    assert overdraw.status_code == 400 and overdraw.json()["error"]["code"] == "insufficient_quota"
    unknown = stack.request(
        "POST", "/admin/accounts/nobody-here/adjust", token=admin, json={"delta": 5, "reason": "x"}
    )
    assert unknown.status_code == 404
    assert stack.request("GET", "/ledger", token=stack.token(user)).json()["items"] == []


def test_sample_events_run_through_the_invoke_api(stack: LocalStack) -> None:
    """The events/ samples are real API Gateway v2 events the handlers accept."""
    event = json.loads((EVENTS / "account_create.json").read_text())
    user = new_user()
    event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = user
    result = stack.invoke("AccountFunction", event)
    assert result["statusCode"] == 201
    assert json.loads(result["body"])["user_id"] == user
    read = json.loads((EVENTS / "account_get.json").read_text())
    read["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = user
    assert stack.invoke("AccountFunction", read)["statusCode"] == 200
