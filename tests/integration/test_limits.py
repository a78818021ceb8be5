"""Spend limits end to end: limits set over HTTP (GET/PUT/DELETE /limits, the admin routes),
usage metered through the Lambda Invoke API of the local stack, the windows' spend read back
over HTTP and from the counter table.

Prices (settings/local.json): gpt-4o, `prompt_tokens=80, completion_tokens=0` costs 100.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.metering import (
    account_item,
    assert_ledger_sums,
    funded_user,
    invoke,
    new_user,
    statuses,
    usage_event,
    usage_record,
    wait_for_indexes,
)
from tests.support.stack import ROOT, LocalStack

ADMIN = "admin-limits"


def put_limit(
    stack: LocalStack, user: str, scope: str, max_quota: Any, period: Any = "day"
) -> dict[str, Any]:
    response = stack.request(
        "PUT",
        f"/limits/{scope}",
        token=stack.token(user),
        json={"max_quota": max_quota, "period": period},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def get_limits(stack: LocalStack, user: str) -> dict[str, dict[str, Any]]:
    response = stack.request("GET", "/limits", token=stack.token(user))
    assert response.status_code == 200, response.text
    return {limit["scope"]: limit for limit in response.json()["limits"]}


def counters(stack: LocalStack, user: str) -> dict[str, int]:
    """The user's window counters as stored (a consistent scan: each window is a partition
    of its own, `<user>#<scope>#<window>`, so nothing reads a user's windows together)."""
    pages = (
        stack.boto3_client("dynamodb")
        .get_paginator("scan")
        .paginate(
            TableName=stack.table_name("LimitWindowsTable"),
            FilterExpression="begins_with(window_key, :u)",
            ExpressionAttributeValues={":u": {"S": f"{user}#"}},
            ConsistentRead=True,
        )
    )
    found: dict[str, int] = {}
    for item in (item for page in pages for item in page["Items"]):
        assert item["window_key"]["S"] == f"{user}#{item['counter']['S']}"
        assert item["user_id"]["S"] == user
        found[item["counter"]["S"]] = int(item["spent"]["N"])
    return found


def today(stack: LocalStack) -> str:
    return f"day:{stack.billing_now().astimezone(UTC):%Y-%m-%d}"


def keyed(user: str, key_id: str, action: str = "charge", **fields: Any) -> dict[str, Any]:
    return {**usage_event(user, action, **fields), "key_id": key_id}


def meter_all(stack: LocalStack, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=len(events)) as pool:
        return list(pool.map(lambda e: invoke(stack, e), events))


# ---------------------------------------------------------------- exact under concurrency


def test_100_concurrent_charges_against_a_key_limit_for_30(stack: LocalStack) -> None:
    user = funded_user(stack, 100_000)
    put_limit(stack, user, "key:k-1", 3000, "day")
    results = meter_all(stack, [keyed(user, "k-1") for _ in range(100)])

    charged = [r for r in results if r["status"] == "charged"]
    refused = [r for r in results if r["status"] == "rejected"]
    assert len(charged) == 30 and len(refused) == 70
    assert {(r["error"], r["limit"]) for r in refused} == {("limit_exceeded", "key:k-1")}
    # Each charge saw the balance exactly.
    assert sorted(r["balance"] for r in charged) == list(range(97_000, 100_000, 100))
    account = assert_ledger_sums(stack, user)
    assert (account["quota"], account["used_quota"], account["request_count"]) == (97_000, 3000, 30)
    assert counters(stack, user) == {f"key:k-1#{today(stack)}": 3000}
    shown = get_limits(stack, user)["key:k-1"]
    assert (shown["spent"], shown["remaining"], shown["window"]) == (3000, 0, today(stack))
    for r in refused:
        assert usage_record(stack, r["request_id"]) is None
    record = usage_record(stack, charged[0]["request_id"])
    assert record is not None and record["key_id"] == "k-1"


def test_a_reserve_and_settle_mix_under_a_key_limit(stack: LocalStack) -> None:
    user = funded_user(stack, 100_000)
    put_limit(stack, user, "key:k-2", 3000, "day")
    events = [keyed(user, "k-2", "reserve" if i % 2 else "charge") for i in range(100)]
    results = meter_all(stack, events)
    admitted = [r for r in results if r["status"] in ("charged", "reserved")]
    refused = [r for r in results if r["status"] == "rejected"]
    assert len(admitted) == 30 and len(refused) == 70
    assert {r["error"] for r in refused} == {"limit_exceeded"}
    key = f"key:k-2#{today(stack)}"
    assert counters(stack, user) == {key: 3000}

    reserved = [r["request_id"] for r in admitted if r["status"] == "reserved"]
    charges = len(admitted) - len(reserved)
    assert reserved, "the mix admitted no reserve"
    # Half the holds settle for less (60 of 100), the others are released: each gives back
    # what it does not use. The first settles above its hold (150): a settle may exceed.
    settling, releasing = reserved[::2], reserved[1::2]
    closes = [
        keyed(user, "k-2", "settle", request_id=rid, prompt_tokens=120 if i == 0 else 48)
        for i, rid in enumerate(settling)
    ] + [keyed(user, "k-2", "release", request_id=rid) for rid in releasing]
    closed = meter_all(stack, closes)
    assert sorted(statuses(closed)) == sorted(
        ["settled"] * len(settling) + ["released"] * len(releasing)
    )
    expected = charges * 100 + 150 + (len(settling) - 1) * 60
    assert counters(stack, user) == {key: expected}
    account = assert_ledger_sums(stack, user)
    assert account["held_quota"] == 0
    assert account["quota"] == 100_000 - expected
    assert account["used_quota"] == expected


def test_a_settle_may_take_the_window_above_its_limit(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000)
    put_limit(stack, user, "key:k-3", 100, "day")
    held = invoke(stack, keyed(user, "k-3", "reserve"))
    assert held["status"] == "reserved"
    over = invoke(stack, keyed(user, "k-3"))
    assert (over["status"], over["error"]) == ("rejected", "limit_exceeded")
    settled = invoke(
        stack, keyed(user, "k-3", "settle", request_id=held["request_id"], prompt_tokens=400)
    )
    assert (settled["status"], settled["quota"]) == ("settled", 500)
    assert get_limits(stack, user)["key:k-3"]["spent"] == 500
    assert assert_ledger_sums(stack, user)["quota"] == 9500


def test_a_batch_charges_exactly_the_events_that_fit_in_request_order(stack: LocalStack) -> None:
    user = funded_user(stack, 100_000)
    put_limit(stack, user, "key:k-4", 1050, "day")
    # 100 each, then one of 50 that still fits after the limit refused a 100.
    events = [keyed(user, "k-4") for _ in range(12)] + [keyed(user, "k-4", prompt_tokens=40)]
    events.insert(3, keyed(user, "other"))  # another key's charge is not limited
    results = invoke(stack, {"events": events})["results"]
    assert statuses(results) == ["charged"] * 11 + ["rejected"] * 2 + ["charged"]
    assert [r.get("error") for r in results[11:13]] == ["limit_exceeded"] * 2
    assert counters(stack, user) == {f"key:k-4#{today(stack)}": 1050}
    assert assert_ledger_sums(stack, user)["quota"] == 100_000 - 1050 - 100


# ---------------------------------------------------------------- windows and scopes


def test_a_new_day_opens_a_new_window(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000)
    put_limit(stack, user, "key:k-5", 100, "day")
    assert invoke(stack, keyed(user, "k-5"))["status"] == "charged"
    assert invoke(stack, keyed(user, "k-5"))["error"] == "limit_exceeded"
    first_day = today(stack)

    now = stack.billing_now()
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    stack.advance_clock(int((midnight - now).total_seconds()) + 2)

    assert today(stack) != first_day
    assert get_limits(stack, user)["key:k-5"]["spent"] == 0
    assert invoke(stack, keyed(user, "k-5"))["status"] == "charged"
    assert invoke(stack, keyed(user, "k-5"))["error"] == "limit_exceeded"
    assert counters(stack, user) == {f"key:k-5#{first_day}": 100, f"key:k-5#{today(stack)}": 100}


def test_an_account_limit_and_a_key_limit_the_tighter_wins(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000)
    put_limit(stack, user, "account", 500, "month")
    put_limit(stack, user, "key:a", 300, "week")
    results = [invoke(stack, keyed(user, "a")) for _ in range(4)]
    assert statuses(results) == ["charged"] * 3 + ["rejected"]
    assert results[3]["limit"] == "key:a"
    results = [invoke(stack, keyed(user, "b")) for _ in range(3)]
    assert statuses(results) == ["charged"] * 2 + ["rejected"]
    assert results[2]["limit"] == "account"
    # Usage with no key counts against the account limit only.
    plain = invoke(stack, usage_event(user))
    assert (plain["status"], plain["limit"]) == ("rejected", "account")
    shown = get_limits(stack, user)
    assert (shown["account"]["spent"], shown["key:a"]["spent"]) == (500, 300)
    assert list(shown) == ["account", "key:a"]
    assert assert_ledger_sums(stack, user)["quota"] == 9500


def test_a_key_id_no_scope_can_name_is_metered_under_the_account_limit(
    stack: LocalStack,
) -> None:
    """Usage events take any key id of 1..128 characters, scopes a narrower set (a path
    segment): such a key's usage is charged and listed, and only the account limit holds it."""
    user = funded_user(stack, 10_000)
    odd = "team/a b?c"
    refused = stack.request(
        "PUT",
        "/limits/key:team%2Fa%20b%3Fc",
        token=stack.token(user),
        json={"max_quota": 100, "period": "day"},
    )
    assert refused.status_code in (400, 404), refused.text
    put_limit(stack, user, "account", 200, "day")
    results = [invoke(stack, keyed(user, odd)) for _ in range(3)]
    assert statuses(results) == ["charged", "charged", "rejected"]
    assert results[2]["limit"] == "account"
    assert list(get_limits(stack, user)) == ["account"]
    assert usage_record(stack, results[0]["request_id"])["key_id"] == odd
    assert assert_ledger_sums(stack, user)["quota"] == 9800


def test_a_charge_bigger_than_the_limit_is_refused_without_a_write(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000)
    put_limit(stack, user, "key:k-6", 99, "total")
    result = invoke(stack, keyed(user, "k-6"))
    assert (result["status"], result["error"], result["limit"]) == (
        "rejected", "limit_exceeded", "key:k-6",
    )  # fmt: skip
    assert counters(stack, user) == {}
    assert usage_record(stack, result["request_id"]) is None


def test_duplicates_of_a_limited_request_change_nothing(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000)
    put_limit(stack, user, "key:k-7", 200, "day")
    first = keyed(user, "k-7")
    results = meter_all(stack, [first] * 5)
    assert sorted(statuses(results)) == ["charged"] + ["duplicate"] * 4
    assert invoke(stack, keyed(user, "k-7"))["status"] == "charged"  # the window is full
    again = invoke(stack, first)
    assert (again["status"], again["first_status"]) == ("duplicate", "charged")
    refused = keyed(user, "k-7")
    answers = meter_all(stack, [refused] * 5)
    assert {(r["status"], r["error"]) for r in answers} == {("rejected", "limit_exceeded")}
    assert counters(stack, user) == {f"key:k-7#{today(stack)}": 200}
    account = assert_ledger_sums(stack, user)
    assert (account["quota"], account["request_count"]) == (9800, 2)


def test_a_limit_deleted_no_longer_refuses(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000)
    put_limit(stack, user, "key:k-8", 100, "day")
    assert invoke(stack, keyed(user, "k-8"))["status"] == "charged"
    assert invoke(stack, keyed(user, "k-8"))["status"] == "rejected"
    response = stack.request("DELETE", "/limits/key:k-8", token=stack.token(user))
    assert response.status_code == 200 and response.json() == {"scope": "key:k-8", "deleted": True}
    assert get_limits(stack, user) == {}
    assert invoke(stack, keyed(user, "k-8"))["status"] == "charged"
    gone = stack.request("DELETE", "/limits/key:k-8", token=stack.token(user))
    assert gone.status_code == 200 and gone.json()["deleted"] is False


def test_replacing_a_limit_keeps_the_windows_spend(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000)
    put_limit(stack, user, "account", 100, "day")
    assert invoke(stack, usage_event(user))["status"] == "charged"
    shown = put_limit(stack, user, "account", 250, "day")
    assert (shown["max_quota"], shown["spent"], shown["remaining"]) == (250, 100, 150)
    assert invoke(stack, usage_event(user))["status"] == "charged"
    assert invoke(stack, usage_event(user))["error"] == "limit_exceeded"


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("scope", "body"),
    [
        ("accounts", {"max_quota": 10, "period": "day"}),
        ("key:", {"max_quota": 10, "period": "day"}),
        ("key:a%20b", {"max_quota": 10, "period": "day"}),
        ("key:a%23b", {"max_quota": 10, "period": "day"}),
        ("key:" + "k" * 129, {"max_quota": 10, "period": "day"}),
        ("account", {"max_quota": 10, "period": "year"}),
        ("account", {"max_quota": 10}),
        ("account", {"max_quota": -1, "period": "day"}),
        ("account", {"max_quota": 1.5, "period": "day"}),
        ("account", {"max_quota": "10", "period": "day"}),
        ("account", {"max_quota": True, "period": "day"}),
        ("account", {"max_quota": 10**19, "period": "day"}),
        ("account", {"max_quota": 10, "period": "day", "extra": 1}),
    ],
)
def test_bad_scopes_periods_and_amounts_are_400_and_write_nothing(
    stack: LocalStack, scope: str, body: dict[str, Any]
) -> None:
    user = funded_user(stack, 0)
    before = account_item(stack, user)
    response = stack.request("PUT", f"/limits/{scope}", token=stack.token(user), json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert account_item(stack, user) == before
    assert get_limits(stack, user) == {}


def test_a_bad_scope_on_delete_is_400_and_limits_of_no_account_are_404(stack: LocalStack) -> None:
    user = funded_user(stack, 0)
    response = stack.request("DELETE", "/limits/nope", token=stack.token(user))
    assert response.status_code == 400
    stranger = new_user()
    assert stack.request("GET", "/limits", token=stack.token(stranger)).status_code == 404
    put = stack.request(
        "PUT",
        "/limits/account",
        token=stack.token(stranger),
        json={"max_quota": 1, "period": "day"},
    )
    assert put.status_code == 404


# ---------------------------------------------------------------- admins


def test_admins_set_and_delete_any_users_limits(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000)
    admin = stack.token(ADMIN, admin=True)
    path = f"/admin/accounts/{user}/limits"
    set_ = stack.request(
        "PUT", f"{path}/key:ops", token=admin, json={"max_quota": 100, "period": "week"}
    )
    assert set_.status_code == 200, set_.text
    assert invoke(stack, keyed(user, "ops"))["status"] == "charged"
    assert invoke(stack, keyed(user, "ops"))["error"] == "limit_exceeded"
    listed = stack.request("GET", path, token=admin).json()["limits"]
    assert [(x["scope"], x["spent"]) for x in listed] == [("key:ops", 100)]
    assert get_limits(stack, user)["key:ops"]["period"] == "week"
    # Not for users, not even for their own account.
    for method in ("GET", "PUT", "DELETE"):
        target = path if method == "GET" else f"{path}/key:ops"
        denied = stack.request(
            method, target, token=stack.token(user), json={"max_quota": 1, "period": "day"}
        )
        assert denied.status_code == 403
    deleted = stack.request("DELETE", f"{path}/key:ops", token=admin)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert get_limits(stack, user) == {}


def test_usage_lists_filter_by_key(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000)
    charged = [invoke(stack, keyed(user, key)) for key in ("a", "b", "a")]
    assert statuses(charged) == ["charged"] * 3
    wait_for_indexes(stack)
    listed = stack.request(
        "GET", "/usage", token=stack.token(user), params={"key_id": "a", "limit": 100}
    ).json()["items"]
    assert sorted(r["request_id"] for r in listed) == sorted(
        [charged[0]["request_id"], charged[2]["request_id"]]
    )
    assert {r["key_id"] for r in listed} == {"a"}


# ---------------------------------------------------------------- the windows' migration


def test_the_migration_carries_live_windows_once_from_the_old_counter_table(
    stack: LocalStack,
) -> None:
    """A stack of an earlier revision kept each user's windows in one partition
    (LimitCountersTable, user_id + counter); the command adds each live one to its window's
    item once (spend metered since the deploy stays), skips expired ones, and runs side by
    side or again carry nothing twice."""
    client = stack.boto3_client("dynamodb")
    old = f"old-limit-counters-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=old,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "user_id", "AttributeType": "S"},
            {"AttributeName": "counter", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "user_id", "KeyType": "HASH"},
            {"AttributeName": "counter", "KeyType": "RANGE"},
        ],
    )
    user = funded_user(stack, 10_000)
    put_limit(stack, user, "account", 300, "day")
    day = today(stack).replace("day:", "account#day:")
    assert invoke(stack, usage_event(user))["status"] == "charged"  # 100 since the deploy
    live = int(stack.billing_now().timestamp()) + 86400
    client.put_item(
        TableName=old,
        Item={"user_id": {"S": user}, "counter": {"S": day}, "spent": {"N": "150"},
              "expires_at": {"N": str(live)}},
    )  # fmt: skip
    client.put_item(
        TableName=old,
        Item={"user_id": {"S": user}, "counter": {"S": "account#day:2020-01-01"},
              "spent": {"N": "70"}, "expires_at": {"N": "1577923200"}},
    )  # fmt: skip
    command = [
        sys.executable, "-m", "tools.migrate_limit_windows", "--from", old,
        "--local", stack.base_url,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers' / 'common'}:{ROOT}"}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=120, check=False
        )

    # Operators running it side by side: the window is carried by exactly one of them.
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda _: run(), range(4)))
    runs.append(run())  # and once more afterwards
    assert [r.returncode for r in runs] == [0] * 5, [r.stderr for r in runs]
    reports = [json.loads(r.stdout) for r in runs]
    assert sum(r["carried"] for r in reports) == 1, reports
    assert all(r["expired"] == 1 and r["carried"] + r["carried_before"] == 1 for r in reports)
    assert (reports[-1]["carried"], reports[-1]["carried_before"]) == (0, 1)
    assert counters(stack, user) == {day: 250}
    assert get_limits(stack, user)["account"]["spent"] == 250
    refused = invoke(stack, usage_event(user))  # 250 + 100 > 300: the old spend counts
    assert (refused["status"], refused["limit"]) == ("rejected", "account")
