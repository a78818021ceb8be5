"""Redemption codes over HTTP on the local stack (and the Invoke API with the sample events).

The failure limit counts per user AND per source IP. The local gateway takes sourceIp from the
TCP peer (as API Gateway does; X-Forwarded-For is not trusted), so each test that fails on
purpose connects from its own loopback address (127.x.y.z) and never uses up 127.0.0.1's
budget that the other tests share.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import stat
import subprocess
import sys
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import requests
from billing.codes import plaintext as codes
from requests.adapters import HTTPAdapter

from tests.support.stack import ROOT, LocalStack, wait_for

EVENTS = ROOT / "events"
_addresses = count(1)
_run = uuid.uuid4().int % 200 + 20  # a second octet per test run


def new_ip() -> str:
    """A loopback address of its own (the gateway sees it as the caller's sourceIp)."""
    n = next(_addresses)
    return f"127.{_run}.{n // 250 + 1}.{n % 250 + 1}"


class _FromAddress(HTTPAdapter):
    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def redeem(stack: LocalStack, token: str, code: str, ip: str = "127.0.0.1") -> requests.Response:
    with requests.Session() as session:
        session.mount("http://", _FromAddress(ip))
        return session.post(
            f"{stack.base_url}/redeem",
            json={"code": code},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )


def warm_up(stack: LocalStack) -> None:
    """Start every redeem worker and fill its caches (settings, key) before a race, so the
    race is not serialised behind cold starts.

    A user without an account is refused after the reads and before anything is counted.
    """
    token = stack.token(f"no-account-{uuid.uuid4().hex[:8]}")
    code = codes.format_code(codes.generate())
    with ThreadPoolExecutor(max_workers=12) as pool:
        replies = list(
            pool.map(
                lambda _: stack.request("POST", "/redeem", token=token, json={"code": code}),
                range(12),
            )
        )
    assert {reply.json()["error"]["code"] for reply in replies} == {"account_not_found"}


def new_user(stack: LocalStack) -> tuple[str, str]:
    """A user with an account: (user_id, token)."""
    user_id = f"user-{uuid.uuid4().hex[:12]}"
    token = stack.token(user_id)
    assert stack.request("POST", "/account", token=token, json={}).status_code == 201
    return user_id, token


def admin(stack: LocalStack) -> str:
    return stack.token(f"admin-{uuid.uuid4().hex[:8]}", admin=True)


def create_codes(stack: LocalStack, **body: Any) -> dict[str, Any]:
    body.setdefault("name", f"test-{uuid.uuid4().hex[:8]}")
    response = stack.request("POST", "/admin/redemption-codes", token=admin(stack), json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert len(created["codes"]) == body["count"]
    return created


def listed(stack: LocalStack, batch_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The `count` listed codes of one batch (newest first: a new batch is on the first
    pages). The listing reads an index, which lags behind its table (in AWS as on the strict
    stack): this waits, bounded, until all of them are listed."""
    token = admin(stack)

    def read() -> list[dict[str, Any]] | None:
        cursor, found = None, []
        for _ in range(50):
            query = "?limit=100" + (f"&cursor={cursor}" if cursor else "")
            page = stack.request("GET", f"/admin/redemption-codes{query}", token=token).json()
            found += [item for item in page["items"] if item["batch_id"] == batch_id]
            cursor = page["next_cursor"]
            if not cursor or (found and page["items"][-1]["batch_id"] != batch_id):
                break  # past the batch (its codes are listed together)
        assert len(found) <= count, found
        return found if len(found) == count else None

    return wait_for(read, timeout=10, message=f"the listing to show batch {batch_id}")


def balance(stack: LocalStack, token: str) -> int:
    return int(stack.request("GET", "/account", token=token).json()["quota"])


def ledger_sum(stack: LocalStack, token: str) -> int:
    total, cursor = 0, None
    while True:
        query = "?limit=100" + (f"&cursor={cursor}" if cursor else "")
        page = stack.request("GET", f"/ledger{query}", token=token).json()
        total += sum(e["delta"] for e in page["items"] if e["balance"] == "quota")
        cursor = page["next_cursor"]
        if not cursor:
            return total


def assert_redeem_failed(response: requests.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "redeem_failed"


# ---------------------------------------------------------------- redeem


def test_redeem_credits_the_quota_once(stack: LocalStack) -> None:
    created = create_codes(stack, quota=1_500_000, count=1)
    _, token = new_user(stack)
    # What a person types: lower case, spaces instead of hyphens, O for 0 and I for 1.
    typed = created["codes"][0].lower().replace("-", " ").replace("0", "o").replace("1", "i")
    response = redeem(stack, token, typed)
    assert response.status_code == 200, response.text
    assert response.json() == {"quota_added": 1_500_000, "quota": 1_500_000}
    assert balance(stack, token) == ledger_sum(stack, token) == 1_500_000
    entries = stack.request("GET", "/ledger", token=token).json()["items"]
    assert [(e["kind"], e["delta"], e["balance_after"]) for e in entries] == [
        ("redeem", 1_500_000, 1_500_000)
    ]
    assert entries[0]["id"].startswith("redeem#")
    [item] = listed(stack, created["batch_id"])
    assert item["uses"] == 1 and item["max_uses"] == 1 and item["status"] == "active"


def test_fifty_users_race_for_a_single_use_code(stack: LocalStack) -> None:
    created = create_codes(stack, quota=777, count=1)
    users = [new_user(stack) for _ in range(50)]
    warm_up(stack)

    def attempt(user: tuple[str, str]) -> requests.Response:
        return redeem(stack, user[1], created["codes"][0], new_ip())

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(attempt, users))
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {200: 1, 400: 49}
    for response in responses:
        if response.status_code == 400:
            assert_redeem_failed(response)
    balances = [balance(stack, token) for _, token in users]
    assert sorted(balances) == [0] * 49 + [777]
    for _, token in users:
        assert ledger_sum(stack, token) == balance(stack, token)
    [item] = listed(stack, created["batch_id"])
    assert item["uses"] == 1


def test_fifty_threads_of_one_user_credit_a_single_use_code_once(stack: LocalStack) -> None:
    created = create_codes(stack, quota=5000, count=1)
    _, token = new_user(stack)
    ip = new_ip()
    warm_up(stack)

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(
            pool.map(lambda _: redeem(stack, token, created["codes"][0], ip), range(50))
        )
    statuses = Counter(response.status_code for response in responses)
    assert statuses[200] == 1
    # The losers fail; once ten failures are counted the user's window refuses the rest.
    assert statuses[400] + statuses[429] == 49
    assert {r.json()["error"]["code"] for r in responses if r.status_code != 200} <= {
        "redeem_failed",
        "too_many_attempts",
    }
    assert balance(stack, token) == ledger_sum(stack, token) == 5000
    [item] = listed(stack, created["batch_id"])
    assert item["uses"] == 1


def test_twenty_users_race_for_a_five_use_code(stack: LocalStack) -> None:
    created = create_codes(stack, quota=300, count=1, max_uses=5)
    users = [new_user(stack) for _ in range(20)]
    warm_up(stack)
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(
            pool.map(lambda user: redeem(stack, user[1], created["codes"][0], new_ip()), users)
        )
    assert Counter(response.status_code for response in responses) == {200: 5, 400: 15}
    balances = [balance(stack, token) for _, token in users]
    assert sorted(balances) == [0] * 15 + [300] * 5
    for _, token in users:
        assert ledger_sum(stack, token) == balance(stack, token)
    [item] = listed(stack, created["batch_id"])
    assert item["uses"] == 5


def test_a_user_redeems_a_multi_use_code_once(stack: LocalStack) -> None:
    created = create_codes(stack, quota=1000, count=1, max_uses=3)
    code = created["codes"][0]
    ip = new_ip()
    _, first = new_user(stack)
    assert redeem(stack, first, code, ip).status_code == 200
    assert_redeem_failed(redeem(stack, first, code, ip))
    # Concurrently, too: ten tries of a fresh user, one use.
    _, second = new_user(stack)
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda _: redeem(stack, second, code, ip), range(10)))
    assert Counter(response.status_code for response in responses) == {200: 1, 400: 9}
    assert balance(stack, first) == ledger_sum(stack, first) == 1000
    assert balance(stack, second) == ledger_sum(stack, second) == 1000
    # The code is still good for someone else.
    _, third = new_user(stack)
    assert redeem(stack, third, code, new_ip()).status_code == 200
    [item] = listed(stack, created["batch_id"])
    assert item["uses"] == 3


def test_every_failure_is_the_same_redeem_failed_body(stack: LocalStack) -> None:
    token_admin = admin(stack)
    in_a_day = (stack.billing_now() + timedelta(days=1)).isoformat()
    expiring = create_codes(stack, quota=10, count=1, expires_at=in_a_day)
    [expiring_item] = listed(stack, expiring["batch_id"])
    # Move its expiry into the past behind the API's back (the API refuses past expiries).
    stack.boto3_client("dynamodb").update_item(
        TableName=stack.table_name("RedemptionCodesTable"),
        Key={"code_id": {"S": expiring_item["code_id"]}},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"S": "2020-01-01T00:00:00.000000Z"}},
    )
    disabled = create_codes(stack, quota=10, count=1)
    [disabled_item] = listed(stack, disabled["batch_id"])
    assert (
        stack.request(
            "DELETE", f"/admin/redemption-codes/{disabled_item['code_id']}", token=token_admin
        ).status_code
        == 200
    )
    used = create_codes(stack, quota=10, count=1)
    good = create_codes(stack, quota=10, count=1, max_uses=2)
    _, someone = new_user(stack)
    assert redeem(stack, someone, used["codes"][0], new_ip()).status_code == 200

    real = good["codes"][0]
    canonical = real.replace("-", "")
    at = next(i for i in range(len(canonical) - 1) if canonical[i] != canonical[i + 1])
    swapped = canonical[:at] + canonical[at + 1] + canonical[at] + canonical[at + 2 :]
    typo_symbol = "X" if canonical[7] != "X" else "Y"
    attempts = {
        "expired": expiring["codes"][0],
        "disabled": disabled["codes"][0],
        "unknown": codes.format_code(codes.generate()),
        "typo": canonical[:7] + typo_symbol + canonical[8:],
        "transposed": swapped,
        "used up": used["codes"][0],
        "malformed": "hello",
    }
    _, token = new_user(stack)
    ip = new_ip()
    bodies = {}
    for name, code in attempts.items():
        response = redeem(stack, token, code, ip)
        assert response.status_code == 400, name
        assert "retry-after" not in response.headers
        bodies[name] = response.content
    # Already redeemed by this user (the code itself is still usable by others).
    assert redeem(stack, token, real, ip).status_code == 200
    again = redeem(stack, token, real, ip)
    bodies["already redeemed"] = again.content
    assert len(set(bodies.values())) == 1, bodies
    assert json.loads(next(iter(bodies.values()))) == {
        "error": {"code": "redeem_failed", "message": "This code cannot be redeemed."}
    }
    assert balance(stack, token) == ledger_sum(stack, token) == 10


def test_redeem_needs_a_token_and_a_string_code(stack: LocalStack) -> None:
    assert stack.request("POST", "/redeem", json={"code": "x"}).status_code == 401
    _, token = new_user(stack)
    ip = new_ip()
    with requests.Session() as session:
        session.mount("http://", _FromAddress(ip))
        for body in ({"code": 12345}, {"code": "A" * 65}, {}):
            reply = session.post(
                f"{stack.base_url}/redeem",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            assert_redeem_failed(reply)
    extra = stack.request("POST", "/redeem", token=token, json={"code": "x", "gift": True})
    assert extra.status_code == 400
    assert extra.json()["error"]["code"] == "invalid_request"


def test_redeem_without_an_account_is_account_not_found(stack: LocalStack) -> None:
    created = create_codes(stack, quota=10, count=1)
    token = stack.token(f"user-{uuid.uuid4().hex[:12]}")
    response = redeem(stack, token, created["codes"][0], new_ip())
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "account_not_found"
    [item] = listed(stack, created["batch_id"])
    assert item["uses"] == 0


# ---------------------------------------------------------------- brute force


def fail_times(stack: LocalStack, token: str, times: int, ip: str) -> None:
    for _ in range(times):
        assert_redeem_failed(redeem(stack, token, codes.format_code(codes.generate()), ip))


def assert_too_many(response: requests.Response, window: int = 600) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "too_many_attempts"
    assert 1 <= int(response.headers["Retry-After"]) <= window


def test_the_eleventh_failure_of_a_user_is_refused_and_a_success_does_not_reset_it(
    stack: LocalStack,
) -> None:
    created = create_codes(stack, quota=50, count=2)
    _, token = new_user(stack)
    ip = new_ip()
    fail_times(stack, token, 5, ip)
    assert redeem(stack, token, created["codes"][0], ip).status_code == 200
    fail_times(stack, token, 5, ip)
    # The 11th attempt after ten failures is refused before the code is looked at: even a
    # good code, from another address, stays unused.
    refused = redeem(stack, token, created["codes"][1], new_ip())
    assert_too_many(refused)
    [first, second] = sorted(listed(stack, created["batch_id"], 2), key=lambda c: c["uses"])
    assert (first["uses"], second["uses"]) == (0, 1)
    assert balance(stack, token) == ledger_sum(stack, token) == 50
    # Another user can still redeem that code.
    _, other = new_user(stack)
    assert redeem(stack, other, created["codes"][1], new_ip()).status_code == 200


def test_the_eleventh_failure_from_one_address_is_refused_for_every_user(
    stack: LocalStack,
) -> None:
    created = create_codes(stack, quota=50, count=1)
    ip = new_ip()
    for _ in range(10):
        _, token = new_user(stack)
        fail_times(stack, token, 1, ip)
    _, fresh = new_user(stack)
    assert_too_many(redeem(stack, fresh, created["codes"][0], ip))
    # The same user from another address is not refused.
    assert redeem(stack, fresh, created["codes"][0], new_ip()).status_code == 200


def test_failure_limit_through_the_invoke_api_with_the_sample_event(stack: LocalStack) -> None:
    """events/redeem_code.json through Lambda Invoke: Retry-After is the function's header."""
    user_id, _ = new_user(stack)
    event = json.loads((EVENTS / "redeem_code.json").read_text())
    event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = user_id
    event["requestContext"]["http"]["sourceIp"] = f"203.0.113.{uuid.uuid4().int % 250 + 1}"
    results = [stack.invoke("RedeemCodeFunction", event) for _ in range(11)]
    assert [r["statusCode"] for r in results] == [400] * 10 + [429]
    assert json.loads(results[0]["body"])["error"]["code"] == "redeem_failed"
    assert 1 <= int(results[-1]["headers"]["Retry-After"]) <= 600
    # A good code in the same event is refused too while the window is open.
    good = create_codes(stack, quota=10, count=1)
    event["body"] = json.dumps({"code": good["codes"][0]})
    assert stack.invoke("RedeemCodeFunction", event)["statusCode"] == 429


def test_the_sample_event_redeems_a_code(stack: LocalStack) -> None:
    user_id, token = new_user(stack)
    created = create_codes(stack, quota=42, count=1)
    event = json.loads((EVENTS / "redeem_code.json").read_text())
    event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = user_id
    event["body"] = json.dumps({"code": created["codes"][0]})
    result = stack.invoke("RedeemCodeFunction", event)
    assert result["statusCode"] == 200
    assert json.loads(result["body"]) == {"quota_added": 42, "quota": 42}
    assert balance(stack, token) == 42


# ---------------------------------------------------------------- admin routes


def test_admin_creates_lists_and_disables_codes(stack: LocalStack) -> None:
    token = admin(stack)
    name = f"promo-{uuid.uuid4().hex[:8]}"
    expires = (stack.billing_now() + timedelta(days=30)).replace(microsecond=0)
    response = stack.request(
        "POST",
        "/admin/redemption-codes",
        token=token,
        json={
            "name": name,
            "quota": 2500,
            "count": 3,
            "max_uses": 4,
            "expires_at": expires.isoformat(),
        },
    )
    assert response.status_code == 201
    created = response.json()
    assert len(set(created["codes"])) == 3
    for code in created["codes"]:
        assert codes.normalise(code) == code.replace("-", "")
    items = listed(stack, created["batch_id"], 3)
    assert len(items) == 3
    for item in items:
        assert set(item) >= {
            "code_id", "name", "quota", "uses", "max_uses", "status",
            "expires_at", "batch_id", "created_by", "created_at",
        }  # fmt: skip
        assert (item["name"], item["quota"], item["uses"], item["max_uses"]) == (name, 2500, 0, 4)
        assert item["status"] == "active"
        assert item["expires_at"] == expires.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        assert codes.is_code_id(item["code_id"])
    text = json.dumps(items)
    for code in created["codes"]:
        assert code not in text and code.replace("-", "") not in text

    target = items[0]["code_id"]
    disabled = stack.request("DELETE", f"/admin/redemption-codes/{target}", token=token)
    assert disabled.status_code == 200
    assert disabled.json()["status"] == "disabled"
    statuses = {item["code_id"]: item["status"] for item in listed(stack, created["batch_id"], 3)}
    assert statuses[target] == "disabled"
    assert sorted(statuses.values()) == ["active", "active", "disabled"]

    for unknown in ("0" * 64, "not-a-code-id"):
        missing = stack.request("DELETE", f"/admin/redemption-codes/{unknown}", token=token)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


def test_the_list_is_newest_first_and_paginated(stack: LocalStack) -> None:
    older = create_codes(stack, quota=1, count=2)
    newer = create_codes(stack, quota=1, count=1)
    listed(stack, older["batch_id"], 2)  # waits until the index shows both batches
    listed(stack, newer["batch_id"])
    token = admin(stack)
    first = stack.request("GET", "/admin/redemption-codes?limit=2", token=token).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    assert first["items"][0]["batch_id"] == newer["batch_id"]
    assert first["items"][1]["batch_id"] == older["batch_id"]
    second = stack.request(
        "GET", f"/admin/redemption-codes?limit=2&cursor={first['next_cursor']}", token=token
    ).json()
    assert second["items"][0]["batch_id"] == older["batch_id"]
    ids = [item["code_id"] for item in first["items"] + second["items"]]
    assert len(set(ids)) == len(ids)
    created_at = [item["created_at"] for item in first["items"] + second["items"]]
    assert created_at == sorted(created_at, reverse=True)
    bad = stack.request("GET", "/admin/redemption-codes?limit=0", token=token)
    assert bad.status_code == 400


def test_non_admins_are_forbidden(stack: LocalStack) -> None:
    created = create_codes(stack, quota=1, count=1)
    [item] = listed(stack, created["batch_id"])
    name = f"nope-{uuid.uuid4().hex[:8]}"
    user = stack.token(f"user-{uuid.uuid4().hex[:12]}")
    calls = [
        ("POST", "/admin/redemption-codes", {"name": name, "quota": 1, "count": 1}),
        ("GET", "/admin/redemption-codes", None),
        ("DELETE", f"/admin/redemption-codes/{item['code_id']}", None),
    ]
    for method, path, body in calls:
        response = stack.request(method, path, token=user, json=body)
        assert response.status_code == 403, (method, response.text)
        assert response.json()["error"]["code"] == "forbidden"
        assert stack.request(method, path, json=body).status_code == 401
    [after] = listed(stack, created["batch_id"])
    assert after["status"] == "active"
    assert not codes_named(stack, name)


def codes_named(stack: LocalStack, name: str) -> list[dict[str, Any]]:
    client = stack.boto3_client("dynamodb")
    pages = client.get_paginator("scan").paginate(
        TableName=stack.table_name("RedemptionCodesTable"),
        FilterExpression="#n = :name",
        ExpressionAttributeNames={"#n": "name"},
        ExpressionAttributeValues={":name": {"S": name}},
        ConsistentRead=True,
    )
    return [item for page in pages for item in page["Items"]]


def audit_records(stack: LocalStack) -> list[dict[str, Any]]:
    client = stack.boto3_client("dynamodb")
    pages = client.get_paginator("scan").paginate(
        TableName=stack.table_name("AuditTable"), ConsistentRead=True
    )
    return [item for page in pages for item in page["Items"]]


@pytest.mark.parametrize(
    "change",
    [
        {"count": 0},
        {"count": 1001},
        {"count": "5"},
        {"quota": 0},
        {"quota": -5},
        {"quota": 1.5},
        {"max_uses": 0},
        {"expires_at": "not a date"},
        {"expires_at": "2031-02-30T00:00:00Z"},
        {"expires_at": "2020-01-01T00:00:00Z"},
        {"expires_at": ""},
        {"name": ""},
        {"surprise": True},
    ],
)
def test_bad_create_requests_are_400_and_write_nothing(
    stack: LocalStack, change: dict[str, Any]
) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "quota": 100, "count": 2, **change}
    audited_before = len(audit_records(stack))
    response = stack.request("POST", "/admin/redemption-codes", token=admin(stack), json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert not codes_named(stack, name)
    assert not codes_named(stack, "")
    assert len(audit_records(stack)) == audited_before


def test_admin_actions_are_audited_without_codes(stack: LocalStack) -> None:
    actor = f"admin-{uuid.uuid4().hex[:8]}"
    token = stack.token(actor, admin=True)
    created = stack.request(
        "POST", "/admin/redemption-codes", token=token, json={"name": "aud", "quota": 5, "count": 2}
    ).json()
    stack.request("GET", "/admin/redemption-codes?limit=1", token=token)
    [item, _] = listed(stack, created["batch_id"], 2)
    stack.request("DELETE", f"/admin/redemption-codes/{item['code_id']}", token=token)
    mine = [r for r in audit_records(stack) if r["actor"]["S"] == actor]
    actions = sorted(r["action"]["S"] for r in mine)
    assert actions == [
        "redemption_codes.create",
        "redemption_codes.disable",
        "redemption_codes.list",
    ]
    targets = {r["action"]["S"]: r["target"]["S"] for r in mine}
    assert targets["redemption_codes.create"] == created["batch_id"]
    assert targets["redemption_codes.disable"] == item["code_id"]
    text = json.dumps(mine)
    for code in created["codes"]:
        assert code not in text and code.replace("-", "") not in text


def test_the_sample_admin_event_creates_codes(stack: LocalStack) -> None:
    event = json.loads((EVENTS / "admin_codes_create.json").read_text())
    event = copy.deepcopy(event)
    result = stack.invoke("AdminCodesFunction", event)
    assert result["statusCode"] == 201
    body = json.loads(result["body"])
    assert len(body["codes"]) == json.loads(event["body"])["count"]


# ---------------------------------------------------------------- plaintext never stored


def test_plaintext_codes_are_nowhere_in_dynamodb_or_the_log(stack: LocalStack) -> None:
    name = f"plain-{uuid.uuid4().hex[:8]}"
    created = create_codes(stack, name=name, quota=5, count=20, max_uses=2)
    plain = created["codes"]
    _, token = new_user(stack)
    ip = new_ip()
    assert redeem(stack, token, plain[0], ip).status_code == 200
    assert_redeem_failed(redeem(stack, token, plain[0], ip))  # already redeemed
    typo = plain[1][:-1] + ("0" if plain[1][-1] != "0" else "1")
    assert_redeem_failed(redeem(stack, token, typo, ip))
    forms = {form for code in plain for form in (code, code.replace("-", ""), code.lower())}
    forms |= {typo, typo.replace("-", "")}

    client = stack.boto3_client("dynamodb")
    tables = client.list_tables()["TableNames"]
    assert stack.table_name("RedemptionCodesTable") in tables
    dumped = []
    for table in tables:
        for page in client.get_paginator("scan").paginate(TableName=table):
            dumped.append(json.dumps(page["Items"]))
    everything = "\n".join(dumped)
    assert len(codes_named(stack, name)) == 20  # the scan does see the batch
    log = stack.log_text()
    assert "POST /redeem" in log
    for form in forms:
        assert form not in everything
        assert form.upper() not in everything.upper()
        assert form not in log and form.upper() not in log.upper()


# ---------------------------------------------------------------- admin CLI


def cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers' / 'common'}{os.pathsep}{ROOT}"}
    env.pop("ADMIN_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "tools.admin", *args, "--api-url", stack.base_url, "--local"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_cli_creates_codes_into_a_new_private_csv(stack: LocalStack, tmp_path: Path) -> None:
    out = tmp_path / "codes.csv"
    name = f"cli-{uuid.uuid4().hex[:8]}"
    done = cli(
        stack,
        "codes", "create", "--name", name, "--quota", "900", "--count", "1203",
        "--max-uses", "2", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1203
    assert len({row["code"] for row in rows}) == 1203
    batches = Counter(row["batch_id"] for row in rows)
    # Chunks of at most 1000 per request (a busy table may make one shorter: the CLI then
    # asks again for the rest).
    assert len(batches) >= 2 and max(batches.values()) <= 1000
    assert {(row["name"], row["quota"], row["max_uses"]) for row in rows} == {(name, "900", "2")}
    for row in rows[:50]:
        codes.normalise(row["code"])
    # Codes are never printed.
    for row in rows:
        assert row["code"] not in done.stdout and row["code"] not in done.stderr
    assert len(codes_named(stack, name)) == 1203

    _, token = new_user(stack)
    response = redeem(stack, token, rows[-1]["code"])
    assert response.status_code == 200 and response.json()["quota_added"] == 900

    # A second run never overwrites the file (and creates nothing).
    before = out.read_bytes()
    again = cli(
        stack, "codes", "create", "--name", name, "--quota", "1", "--count", "1", "--out", str(out)
    )
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert out.read_bytes() == before
    assert len(codes_named(stack, name)) == 1203


@pytest.mark.timeout(1200)  # 1000 redemptions through HTTP on a shared machine
def test_a_thousand_codes_created_while_the_table_throttles_all_redeem(
    stack: LocalStack, tmp_path: Path
) -> None:
    """BatchWriteItem on the codes table fails more times in a row than botocore retries, then
    fails after it was applied (a lost answer), while the CLI creates 1000 codes: every code
    in its file is stored, and every one redeems once."""
    table = stack.table_name("RedemptionCodesTable")
    before = stack.stats()["injected_faults"].get("dynamodb.BatchWriteItem", 0)
    writes = {"service": "dynamodb", "operation": "BatchWriteItem", "contains": table}
    # Calls 2-7 throttled (botocore gives up after 4 attempts, the domain backs off and
    # sends again); then 5 calls that write and still answer 500 (the domain cannot know
    # which codes are stored and must find out).
    stack.fault(**writes, error_code="ProvisionedThroughputExceededException", after=1, count=6)
    stack.fault(**writes, error_code="InternalServerError", after=3, count=5, after_commit=True)
    out = tmp_path / "throttled.csv"
    name = f"throttled-{uuid.uuid4().hex[:8]}"
    try:
        done = cli(
            stack, "codes", "create", "--name", name, "--quota", "700", "--count", "1000",
            "--no-progress", "--out", str(out),
        )  # fmt: skip
    finally:
        stack.clear_faults()
    assert done.returncode == 0, done.stderr
    assert stack.stats()["injected_faults"]["dynamodb.BatchWriteItem"] - before == 11
    with out.open(newline="") as handle:
        handed_out = [row["code"] for row in csv.DictReader(handle)]
    assert len(handed_out) == len(set(handed_out)) == 1000
    assert len(codes_named(stack, name)) == 1000

    users = [new_user(stack) for _ in range(10)]
    work = [(users[i % len(users)][1], code) for i, code in enumerate(handed_out)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(lambda job: redeem(stack, *job), work))
    assert Counter(reply.status_code for reply in replies) == {200: 1000}
    assert {reply.json()["quota_added"] for reply in replies} == {700}
    for _, token in users:
        assert balance(stack, token) == ledger_sum(stack, token) == 100 * 700
    # Each stored code was one of those handed out: all 1000 were used, once.
    assert [int(item["uses"]["N"]) for item in codes_named(stack, name)] == [1] * 1000


def test_cli_lists_and_disables(stack: LocalStack, tmp_path: Path) -> None:
    out = tmp_path / "one.csv"
    name = f"cli-{uuid.uuid4().hex[:8]}"
    created = cli(
        stack, "codes", "create", "--name", name, "--quota", "5", "--count", "1", "--out", str(out)
    )
    assert created.returncode == 0, created.stderr

    def listed() -> list[dict[str, Any]]:
        # Pages of 100 through every code: other tests may have created codes at a later
        # (moved) clock, and the newest-first index is eventually consistent.
        listing = cli(stack, "codes", "list", "--limit", "100", "--all")
        assert listing.returncode == 0, listing.stderr
        items = [json.loads(line) for line in listing.stdout.splitlines()]
        return [item for item in items if item["name"] == name]

    [mine] = wait_for(listed, message="the new code in the listing")
    disabled = cli(stack, "codes", "disable", mine["code_id"])
    assert disabled.returncode == 0, disabled.stderr
    assert json.loads(disabled.stdout)["status"] == "disabled"
    missing = cli(stack, "codes", "disable", "0" * 64)
    assert missing.returncode == 1 and "not_found" in missing.stderr


def test_cli_reports_bad_input_and_removes_the_empty_file(
    stack: LocalStack, tmp_path: Path
) -> None:
    out = tmp_path / "bad.csv"
    done = cli(
        stack, "codes", "create", "--name", "x", "--quota", "-1", "--count", "3", "--out", str(out)
    )
    assert done.returncode == 1
    assert "invalid_request" in done.stderr
    assert not out.exists()
