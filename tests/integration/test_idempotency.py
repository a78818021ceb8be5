"""Idempotency-Key on POST /checkout, /referral/transfer and /admin/accounts/{id}/adjust, over
HTTP on the local stack (API.md, Conventions).

The same key and request again: the first reply (status and body, marked
`Idempotent-Replayed: true`), nothing written. The same key with another request: 409
idempotency_key_reused, nothing written. Keys are per caller. While the first request runs,
the others under its key get 409 idempotency_key_in_progress (Retry-After) or the first reply:
never a second effect. A refused request keeps nothing. After the key's lifetime it is a new
key, and a quota change still applies at most once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.support.payments import UNIT, ledger_entries
from tests.support.stack import LocalStack, wait_for

PARALLEL = 20
REBATE_PERCENT = 10  # settings/local.json


def key() -> str:
    return f"key-{uuid.uuid4().hex}"


def account_of(stack: LocalStack, prefix: str = "idem") -> tuple[str, str]:
    user = f"{prefix}-{uuid.uuid4().hex[:12]}"
    token = stack.token(user)
    assert stack.request("POST", "/account", token=token, json={}).status_code == 201
    return user, token


def admin_token(stack: LocalStack) -> str:
    return stack.token(f"admin-idem-{uuid.uuid4().hex[:8]}", admin=True)


def checkout(stack: LocalStack, token: str, idem: str | None, amount: int = 3) -> Any:
    headers = {"Idempotency-Key": idem} if idem is not None else None
    return stack.request(
        "POST",
        "/checkout",
        token=token,
        json={"amount": amount, "method": "stripe"},
        headers=headers,
    )


def orders_of(stack: LocalStack, token: str) -> list[dict[str, Any]]:
    """The user's orders: GET /topups reads a global index, which lags; wait it out first,
    so that "no second order" means none was written."""
    time.sleep(stack.index_lag + 0.2)
    response = stack.request("GET", "/topups?limit=100", token=token)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def adjust(
    stack: LocalStack, admin: str, user: str, idem: str | None, delta: int = 700, reason: str = "r"
) -> Any:
    headers = {"Idempotency-Key": idem} if idem is not None else None
    return stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=admin,
        json={"delta": delta, "reason": reason},
        headers=headers,
    )


def transfer(stack: LocalStack, token: str, idem: str | None, quota: int = UNIT) -> Any:
    headers = {"Idempotency-Key": idem} if idem is not None else None
    return stack.request(
        "POST", "/referral/transfer", token=token, json={"quota": quota}, headers=headers
    )


def kinds(stack: LocalStack, user: str, kind: str) -> list[dict[str, Any]]:
    return [item for item in ledger_entries(stack, user) if item["kind"]["S"] == kind]


def balance(stack: LocalStack, token: str) -> dict[str, int]:
    account = stack.request("GET", "/account", token=token).json()
    return {"quota": account["quota"], "aff_quota": account["aff_quota"]}


def rewarded_inviter(stack: LocalStack, units: int = 40) -> tuple[str, str, int]:
    """An inviter with reward quota: its invitee's order completed by an admin."""
    inviter, inviter_token = account_of(stack, "inviter")
    code = stack.request("GET", "/account", token=inviter_token).json()["aff_code"]
    invitee_token = stack.token(f"invitee-{uuid.uuid4().hex[:12]}")
    created = stack.request("POST", "/account", token=invitee_token, json={"referral_code": code})
    assert created.status_code == 201, created.text
    order = checkout(stack, invitee_token, None, amount=units).json()
    done = stack.request(
        "POST", f"/admin/topups/{order['order_id']}/complete", token=admin_token(stack)
    )
    assert done.status_code == 200, done.text
    rebate = units * UNIT * REBATE_PERCENT // 100
    wait_for(lambda: balance(stack, inviter_token)["aff_quota"] == rebate, timeout=30)
    return inviter, inviter_token, rebate


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def parallel(call: Callable[[], requests.Response]) -> list[requests.Response]:
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(lambda _: call(), range(PARALLEL)))


def assert_one_effect(responses: list[requests.Response], status: int) -> dict[str, Any]:
    """Every reply is the first one or a clear 'in progress' 409; returns the first reply."""
    done = [r for r in responses if r.status_code == status]
    busy = [r for r in responses if r.status_code != status]
    assert done, [r.text for r in responses]
    assert all(r.json() == done[0].json() for r in done)
    for response in busy:
        assert_error(response, 409, "idempotency_key_in_progress")
        assert int(response.headers["Retry-After"]) >= 1
    body: dict[str, Any] = done[0].json()
    return body


# ---------------------------------------------------------------- checkout


def test_a_checkout_retried_with_its_key_is_the_same_order(stack: LocalStack) -> None:
    _user, token = account_of(stack)
    idem = key()
    first = checkout(stack, token, idem)
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = checkout(stack, token, idem)
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [order["order_id"] for order in orders_of(stack, token)] == [first.json()["order_id"]]


def test_a_checkout_key_reused_with_another_body_is_409_and_creates_nothing(
    stack: LocalStack,
) -> None:
    _user, token = account_of(stack)
    idem = key()
    first = checkout(stack, token, idem, amount=3)
    assert first.status_code == 201, first.text
    for amount in (4, 300):
        assert_error(checkout(stack, token, idem, amount=amount), 409, "idempotency_key_reused")
    channel = stack.request(
        "POST",
        "/checkout",
        token=token,
        json={"amount": 3, "method": "epay", "channel": "alipay"},
        headers={"Idempotency-Key": idem},
    )
    assert_error(channel, 409, "idempotency_key_reused")
    assert len(orders_of(stack, token)) == 1
    # the first request's reply is still what its key answers
    assert checkout(stack, token, idem, amount=3).json() == first.json()


def test_checkouts_without_a_key_are_each_a_new_order(stack: LocalStack) -> None:
    _user, token = account_of(stack)
    ids = {checkout(stack, token, None).json()["order_id"] for _ in range(2)}
    assert len(ids) == 2 == len(orders_of(stack, token))


def test_keys_are_per_caller(stack: LocalStack) -> None:
    _a, token_a = account_of(stack)
    _b, token_b = account_of(stack)
    idem = key()
    first = checkout(stack, token_a, idem, amount=3)
    # the same key from another user, even with another body, is that user's own key
    other = checkout(stack, token_b, idem, amount=5)
    assert first.status_code == other.status_code == 201, other.text
    assert "Idempotent-Replayed" not in other.headers
    assert first.json()["order_id"] != other.json()["order_id"]
    assert checkout(stack, token_b, idem, amount=5).json() == other.json()
    assert checkout(stack, token_a, idem, amount=3).json() == first.json()
    assert [o["order_id"] for o in orders_of(stack, token_a)] == [first.json()["order_id"]]
    assert [o["order_id"] for o in orders_of(stack, token_b)] == [other.json()["order_id"]]


def test_twenty_parallel_checkouts_with_one_key_make_one_order(stack: LocalStack) -> None:
    _user, token = account_of(stack)
    idem = key()
    first = assert_one_effect(parallel(lambda: checkout(stack, token, idem)), 201)
    assert [order["order_id"] for order in orders_of(stack, token)] == [first["order_id"]]
    retry = checkout(stack, token, idem)  # what a client does after its 409
    assert retry.status_code == 201 and retry.json() == first


# ---------------------------------------------------------------- referral transfer


def test_a_transfer_retried_with_its_key_replays_and_moves_once(stack: LocalStack) -> None:
    inviter, token, rebate = rewarded_inviter(stack)
    idem = key()
    first = transfer(stack, token, idem)
    assert first.status_code == 200, first.text
    assert first.json() == {"aff_quota": rebate - UNIT, "quota": UNIT}
    # another transfer in between: the retry still answers what the first one answered
    assert transfer(stack, token, key()).status_code == 200
    again = transfer(stack, token, idem)
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert_error(transfer(stack, token, idem, quota=UNIT + 1), 409, "idempotency_key_reused")
    assert balance(stack, token) == {"aff_quota": rebate - 2 * UNIT, "quota": 2 * UNIT}
    assert len(kinds(stack, inviter, "referral_transfer")) == 4  # two transfers, two entries each


def test_twenty_parallel_transfers_with_one_key_move_once(stack: LocalStack) -> None:
    inviter, token, rebate = rewarded_inviter(stack)
    idem = key()
    first = assert_one_effect(parallel(lambda: transfer(stack, token, idem)), 200)
    assert first == {"aff_quota": rebate - UNIT, "quota": UNIT}
    assert balance(stack, token) == first
    assert len(kinds(stack, inviter, "referral_transfer")) == 2


def test_a_refused_transfer_keeps_nothing_under_its_key(stack: LocalStack) -> None:
    inviter, token, rebate = rewarded_inviter(stack)
    idem = key()
    assert_error(transfer(stack, token, idem, quota=rebate + 1), 400, "insufficient_aff_quota")
    # the corrected request under the same key runs (nothing was stored for the refusal)
    fixed = transfer(stack, token, idem, quota=rebate)
    assert fixed.status_code == 200 and "Idempotent-Replayed" not in fixed.headers
    assert fixed.json() == {"aff_quota": 0, "quota": rebate}
    assert len(kinds(stack, inviter, "referral_transfer")) == 2


# ---------------------------------------------------------------- admin adjustment


def test_an_adjustment_retried_with_its_key_replays_and_applies_once(stack: LocalStack) -> None:
    user, token = account_of(stack)
    admin = admin_token(stack)
    idem = key()
    first = adjust(stack, admin, user, idem, delta=700)
    assert first.status_code == 200 and first.json()["quota"] == 700
    assert adjust(stack, admin, user, key(), delta=50).status_code == 200
    again = adjust(stack, admin, user, idem, delta=700)
    assert again.status_code == 200 and again.json() == first.json()  # the first result
    assert again.headers["Idempotent-Replayed"] == "true"
    for changed in ({"delta": 701}, {"reason": "another reason"}):
        assert_error(adjust(stack, admin, user, idem, **changed), 409, "idempotency_key_reused")
    other, _ = account_of(stack)
    assert_error(adjust(stack, admin, other, idem, delta=700), 409, "idempotency_key_reused")
    assert balance(stack, token)["quota"] == 750
    assert kinds(stack, other, "adjustment") == []
    assert len(kinds(stack, user, "adjustment")) == 2


def test_another_admins_identical_key_is_another_adjustment(stack: LocalStack) -> None:
    user, token = account_of(stack)
    idem = key()
    for admin in (admin_token(stack), admin_token(stack)):
        response = adjust(stack, admin, user, idem, delta=300)
        assert response.status_code == 200 and "Idempotent-Replayed" not in response.headers
    assert balance(stack, token)["quota"] == 600
    assert len(kinds(stack, user, "adjustment")) == 2


def test_twenty_parallel_adjustments_with_one_key_apply_once(stack: LocalStack) -> None:
    user, token = account_of(stack)
    admin = admin_token(stack)
    idem = key()
    first = assert_one_effect(parallel(lambda: adjust(stack, admin, user, idem, delta=900)), 200)
    assert first["quota"] == 900 == balance(stack, token)["quota"]
    assert len(kinds(stack, user, "adjustment")) == 1


# ---------------------------------------------------------------- the key itself


@pytest.mark.parametrize(
    "bad",
    ["", "k" * 256, "with space", "tab\tin", "\u00e9t\u00e9".encode().decode("latin-1")],
)
def test_malformed_keys_are_400_and_write_nothing(stack: LocalStack, bad: str) -> None:
    user, token = account_of(stack)
    assert_error(checkout(stack, token, bad), 400, "invalid_request")
    assert_error(adjust(stack, admin_token(stack), user, bad), 400, "invalid_request")
    assert_error(transfer(stack, token, bad), 400, "invalid_request")
    assert orders_of(stack, token) == []
    assert ledger_entries(stack, user) == []


def test_the_longest_key_is_accepted(stack: LocalStack) -> None:
    _user, token = account_of(stack)
    idem = "k" * 255
    first = checkout(stack, token, idem)
    assert first.status_code == 201, first.text
    assert checkout(stack, token, idem).json() == first.json()


def test_cors_lets_the_console_send_the_key_and_read_the_replay_mark(stack: LocalStack) -> None:
    preflight = stack.request(
        "OPTIONS",
        "/checkout",
        headers={
            "Origin": "https://console.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
        },
    )
    assert preflight.status_code == 204
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower().split(",")
    assert "idempotency-key" in allowed
    _user, token = account_of(stack)
    response = stack.request(
        "POST",
        "/checkout",
        token=token,
        json={"amount": 1, "method": "stripe"},
        headers={"Origin": "https://console.example", "Idempotency-Key": key()},
    )
    exposed = response.headers["Access-Control-Expose-Headers"].lower().split(",")
    assert "idempotent-replayed" in exposed and "retry-after" in exposed


# ---------------------------------------------------------------- lifetime


def _records(stack: LocalStack) -> dict[str, dict[str, Any]]:
    client = stack.boto3_client("dynamodb")
    items: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {
        "TableName": stack.table_name("IdempotencyTable"),
        "ConsistentRead": True,
    }
    while True:
        page = client.scan(**kwargs)
        items.update({item["id"]["S"]: item for item in page["Items"]})
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def test_a_key_lives_a_day_then_its_transfer_still_applies_at_most_once(
    stack: LocalStack,
) -> None:
    """Expiry is simulated by moving the stored record's expiry into the past (what a day
    does); DynamoDB's TTL deletes such records later, and until then they count as gone."""
    inviter, token, rebate = rewarded_inviter(stack)
    idem = key()
    before = _records(stack)
    first = transfer(stack, token, idem)
    assert first.status_code == 200, first.text
    new = {name: item for name, item in _records(stack).items() if name not in before}
    assert len(new) == 1
    (record_id, record), *_ = new.items()
    assert idem not in record_id  # stored hashed
    lifetime = int(record["expiration"]["N"]) - time.time()
    assert 24 * 3600 - 120 < lifetime <= 24 * 3600
    assert record["status"]["S"] == "COMPLETED"

    stack.boto3_client("dynamodb").update_item(
        TableName=stack.table_name("IdempotencyTable"),
        Key={"id": {"S": record_id}},
        UpdateExpression="SET expiration = :past",
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}},
    )
    # the same request again after the key expired: it runs, but moves nothing twice
    late = transfer(stack, token, idem)
    assert late.status_code == 200 and "Idempotent-Replayed" not in late.headers
    assert balance(stack, token) == {"aff_quota": rebate - UNIT, "quota": UNIT}
    assert len(kinds(stack, inviter, "referral_transfer")) == 2


# ---------------------------------------------------------------- failures around the key


def test_an_adjustment_whose_commit_answer_was_lost_applies_once_on_its_retry(
    stack: LocalStack,
) -> None:
    """The ledger transaction commits but its answer is lost: whatever the first request
    answered, its retry under the same key applies nothing more."""
    user, token = account_of(stack)
    admin = admin_token(stack)
    idem = key()
    stack.fault(
        service="dynamodb",
        operation="TransactWriteItems",
        contains=user,
        error_code="InternalServerError",
        after_commit=True,
        count=1,
    )
    try:
        first = adjust(stack, admin, user, idem, delta=800)
    finally:
        stack.clear_faults()
    retry = adjust(stack, admin, user, idem, delta=800)
    assert retry.status_code == 200, (first.status_code, first.text, retry.text)
    assert retry.json()["quota"] == 800 == balance(stack, token)["quota"]
    assert len(kinds(stack, user, "adjustment")) == 1


def test_when_the_key_cannot_be_stored_nothing_is_done(stack: LocalStack) -> None:
    _user, token = account_of(stack)
    idem = key()
    stack.fault(
        service="dynamodb",
        operation="PutItem",
        contains=stack.table_name("IdempotencyTable"),
        error_code="InternalServerError",
        count=-1,
    )
    try:
        refused = checkout(stack, token, idem)
    finally:
        stack.clear_faults()
    assert refused.status_code >= 500
    assert orders_of(stack, token) == []
    created = checkout(stack, token, idem)  # the client's retry, once the table answers
    assert created.status_code == 201, created.text
    assert [o["order_id"] for o in orders_of(stack, token)] == [created.json()["order_id"]]
