"""Usage insight end to end on the local stack: usage metered through the Invoke API flows
through the usage table's stream into the rollups (UsageRollupFunction), and
GET /usage/summary, GET /usage (filters) and GET /ledger/export answer from them.

The rollups are fed by the stream, so reads poll (bounded) until they have caught up.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import pytest
from billing.facts import BILLED_USAGE_STATUSES

from tests.support.metering import wait_for_indexes
from tests.support.stack import LocalStack, wait_for

METER = "MeterUsageFunction"
MODELS = ("gpt-4o", "claude-3-5-sonnet")
KEYS = ("key-a", "key-b", None)  # the API keys of the usage events (None: no key_id sent)
DAY = 24 * 3600
CATCH_UP_SECONDS = 90
ROLLUP_STREAM = "UsageRollupFunction/UsageStream"  # the local stack's stream poller


# ---------------------------------------------------------------- helpers


def funded_user(stack: LocalStack, quota: int, reason: str = "usage insight test") -> str:
    user = f"insight-{uuid.uuid4().hex[:12]}"
    created = stack.request("POST", "/account", token=stack.token(user), json={})
    assert created.status_code == 201, created.text
    adjusted = stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=stack.token("admin-insight", admin=True),
        json={"delta": quota, "reason": reason},
    )
    assert adjusted.status_code == 200, adjusted.text
    return user


def meter(stack: LocalStack, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for start in range(0, len(events), 100):
        answer = stack.invoke(METER, {"events": events[start : start + 100]})
        results.extend(answer["results"])
    return results


def get(stack: LocalStack, user: str, path: str, **params: Any) -> Any:
    response = stack.request("GET", path, token=stack.token(user), params=params)
    assert response.status_code == 200, response.text
    return response.json()


def all_usage(stack: LocalStack, user: str, **filters: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 100, **filters, **({"cursor": cursor} if cursor else {})}
        page = get(stack, user, "/usage", **params)
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items


def expected_buckets(
    records: Iterable[dict[str, Any]], group_by: str
) -> dict[str | None, dict[str, int]]:
    """What the summary must say, computed from the usage records themselves."""
    sums: dict[str | None, dict[str, int]] = defaultdict(
        lambda: {"quota": 0, "requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    )
    for record in records:
        if record["status"] not in BILLED_USAGE_STATUSES:
            continue
        key = {
            "day": (record["updated_at"] or record["created_at"])[:10],
            "model": record["model"],
            "key": record.get("key_id"),
        }[group_by]
        bucket = sums[key]
        bucket["quota"] += record["quota"]
        bucket["requests"] += 1
        bucket["prompt_tokens"] += record["prompt_tokens"]
        bucket["completion_tokens"] += record["completion_tokens"]
    return dict(sums)


def summary_buckets(answer: dict[str, Any]) -> dict[str | None, dict[str, int]]:
    fields = ("quota", "requests", "prompt_tokens", "completion_tokens")
    return {
        b["key"]: {name: b[name] for name in fields}
        for b in answer["buckets"]
        if b["requests"]  # a day bucket of the range without usage
    }


def summary_when(stack: LocalStack, user: str, requests: int, **params: Any) -> dict[str, Any]:
    """The summary once it counts `requests` requests (the stream has caught up)."""

    def check() -> dict[str, Any] | None:
        answer: dict[str, Any] = get(stack, user, "/usage/summary", **params)
        return answer if answer["total"]["requests"] >= requests else None

    return wait_for(check, timeout=CATCH_UP_SECONDS, interval=0.5, message="the rollups")


def rollup_stream(stack: LocalStack) -> dict[str, int]:
    """The local stack's counters of the usage stream's delivery to UsageRollupFunction."""
    stats: dict[str, int] = stack.stats()["streams"][ROLLUP_STREAM]
    return stats


# ---------------------------------------------------------------- the summary is exact


@pytest.fixture(scope="module")
def metered(stack: LocalStack) -> dict[str, Any]:
    """500 usage events over 3 billing days and 2 models: charges, holds settled (with other
    token counts than reserved) and holds released (never billed)."""
    user = funded_user(stack, 10**12)
    first_day = stack.billing_now().date()
    sent = 0
    for day in range(3):
        if day:
            stack.advance_clock(DAY)
        events: list[dict[str, Any]] = []
        settles: list[dict[str, Any]] = []
        for n in range(167 if day < 2 else 166):
            model = MODELS[(n + day) % 2]
            request_id = f"req-{uuid.uuid4().hex}"
            base = {"request_id": request_id, "user_id": user, "model": model}
            key = KEYS[n % len(KEYS)]
            if key is not None:  # the API key the gateway served (None: not sent)
                base["key_id"] = key
            tokens = {"prompt_tokens": 10 + n, "completion_tokens": 3 * n + day}
            if n % 5 == 0:
                events.append({**base, "action": "reserve", **tokens})
                kind = "release" if n % 10 == 0 else "settle"
                settles.append(
                    {**base, "action": kind, "prompt_tokens": 7 + n, "completion_tokens": n}
                )
            else:
                events.append({**base, "action": "charge", **tokens})
        sent += len(events)
        results = meter(stack, events) + meter(stack, settles)
        assert {r["status"] for r in results} <= {"charged", "reserved", "settled", "released"}
    assert sent == 500
    # GET /usage reads an index: a settle or release written within its lag still shows the
    # reserve's status there (as in AWS), and these records are what the summary must equal.
    wait_for_indexes(stack)
    records = all_usage(stack, user)
    assert len(records) == 500
    billed = sum(1 for r in records if r["status"] in BILLED_USAGE_STATUSES)
    span = {"from": first_day.isoformat(), "to": stack.billing_now().date().isoformat()}
    summary_when(stack, user, billed, **span)
    return {"user": user, "records": records, "billed": billed, "span": span}


@pytest.mark.parametrize("group_by", ["day", "model", "key"])
def test_summary_equals_the_sums_of_the_usage_records(
    stack: LocalStack, metered: dict[str, Any], group_by: str
) -> None:
    answer = get(stack, metered["user"], "/usage/summary", group_by=group_by, **metered["span"])
    expected = expected_buckets(metered["records"], group_by)
    assert summary_buckets(answer) == expected
    assert answer["total"]["requests"] == metered["billed"]
    assert answer["total"]["quota"] == sum(b["quota"] for b in expected.values())
    if group_by == "day":
        assert len(expected) == 3
        assert [b["key"] for b in answer["buckets"]] == sorted(b["key"] for b in answer["buckets"])
        for bucket in answer["buckets"]:
            assert sum(bucket["models"].values()) == bucket["quota"]
    if group_by == "model":
        assert set(expected) == set(MODELS)


def test_the_summary_total_equals_the_accounts_used_quota(
    stack: LocalStack, metered: dict[str, Any]
) -> None:
    account = get(stack, metered["user"], "/account")
    answer = get(stack, metered["user"], "/usage/summary", **metered["span"])
    assert answer["total"]["quota"] == account["used_quota"]
    assert answer["total"]["requests"] == account["request_count"]


def test_the_default_range_is_the_last_30_days(stack: LocalStack, metered: dict[str, Any]) -> None:
    answer = get(stack, metered["user"], "/usage/summary")
    assert answer["to"] == stack.billing_now().date().isoformat()
    assert len(answer["buckets"]) == 30
    assert answer["total"]["requests"] == metered["billed"]


def test_usage_filters_by_model_and_dates(stack: LocalStack, metered: dict[str, Any]) -> None:
    user, records = metered["user"], metered["records"]
    day = metered["span"]["from"]
    by_model = all_usage(stack, user, model=MODELS[1])
    assert sorted(r["request_id"] for r in by_model) == sorted(
        r["request_id"] for r in records if r["model"] == MODELS[1]
    )
    on_day = all_usage(stack, user, **{"from": day, "to": day})
    assert sorted(r["request_id"] for r in on_day) == sorted(
        r["request_id"] for r in records if r["created_at"][:10] == day
    )
    # Short pages still fill up to the limit when filters drop records.
    page = get(stack, user, "/usage", limit=7, model=MODELS[0])
    assert len(page["items"]) == 7 and page["next_cursor"]
    assert {r["model"] for r in page["items"]} == {MODELS[0]}
    # A cursor holds only for the filters it was issued with.
    refused = stack.request(
        "GET",
        "/usage",
        token=stack.token(user),
        params={"limit": 7, "model": MODELS[1], "cursor": page["next_cursor"]},
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_request"


# ---------------------------------------------------------------- exactly once


def test_a_failed_rollup_write_is_retried_without_counting_twice(stack: LocalStack) -> None:
    user = funded_user(stack, 10**9)
    events = [
        {
            "action": "charge",
            "request_id": f"req-{uuid.uuid4().hex}",
            "user_id": user,
            "model": MODELS[n % 2],
            "prompt_tokens": 100 + n,
            "completion_tokens": n,
        }
        for n in range(40)
    ]
    # The rollup transaction holding the first request's marker ("r#<request_id>", which no
    # metering write contains) commits, then the function is told it failed: it reports the
    # batch's records, the stream delivers them again, and the markers hold.
    marker = f"r#{events[0]['request_id']}"
    before = rollup_stream(stack)
    stack.fault(
        service="dynamodb",
        operation="TransactWriteItems",
        error_code="ValidationException",
        contains=marker,
        after_commit=True,
        count=1,
        message="injected after commit",
    )
    results = meter(stack, events)
    assert {r["status"] for r in results} == {"charged"}

    def fired() -> bool:
        faults = stack.http.get(f"{stack.base_url}/_local/faults", timeout=10).json()
        listed = faults if isinstance(faults, list) else faults.get("faults", [])
        return any(f.get("contains") == marker and f.get("fired") for f in listed)

    wait_for(fired, timeout=CATCH_UP_SECONDS, message="the injected rollup failure")

    def redelivered() -> dict[str, int] | None:
        # The failed batch was retried (the poller counted it), and since then every record
        # the poller read has been delivered: the redelivery ran, and nothing was given up.
        now = rollup_stream(stack)
        failed = now["partial_failures"] + now["function_errors"]
        settled = now["delivered"] + now["filtered"] + now["discarded"] == now["records"]
        if (
            now["retries"] > before["retries"]
            and failed > before["partial_failures"] + before["function_errors"]
            and settled
        ):
            return now
        return None

    after = wait_for(redelivered, timeout=CATCH_UP_SECONDS, message="the rollup redelivery")
    assert after["discarded"] == before["discarded"]
    answer = get(stack, user, "/usage/summary", group_by="model")
    account = get(stack, user, "/account")
    assert answer["total"]["quota"] == account["used_quota"] == sum(r["quota"] for r in results)
    assert answer["total"]["requests"] == 40
    # Settled for good: nothing more arrives later.
    stack.clear_faults()
    again = get(stack, user, "/usage/summary", group_by="model")
    assert again["total"] == answer["total"]


# ---------------------------------------------------------------- keys and users


def test_usage_lists_and_sums_by_the_key_the_events_carried(
    stack: LocalStack, metered: dict[str, Any]
) -> None:
    """key_id goes from the usage events through metering onto the records, the listing's
    filter and the per-key rollups."""
    user, records = metered["user"], metered["records"]
    assert {r.get("key_id") for r in records} == set(KEYS)
    for key in ("key-a", "key-b"):
        listed = all_usage(stack, user, key_id=key)
        assert sorted(r["request_id"] for r in listed) == sorted(
            r["request_id"] for r in records if r.get("key_id") == key
        )
    answer = get(stack, user, "/usage/summary", group_by="key", **metered["span"])
    by_key = summary_buckets(answer)
    assert set(by_key) == set(KEYS)
    assert by_key == expected_buckets(records, "key")


def test_a_user_never_sees_another_users_usage(stack: LocalStack, metered: dict[str, Any]) -> None:
    other = funded_user(stack, 1000)
    answer = get(stack, other, "/usage/summary", group_by="model", **metered["span"])
    assert answer["total"]["requests"] == 0 and answer["buckets"] == []
    assert get(stack, other, "/usage", model=MODELS[0])["items"] == []
    statement = stack.request("GET", "/ledger/export", token=stack.token(other))
    rows = list(csv.DictReader(io.StringIO(statement.text)))
    assert [row["kind"] for row in rows] == ["adjustment"]
    # Another user's cursor is refused.
    page = get(stack, metered["user"], "/usage", limit=5)
    refused = stack.request(
        "GET", "/usage", token=stack.token(other), params={"cursor": page["next_cursor"]}
    )
    assert refused.status_code == 400


# ---------------------------------------------------------------- the statement


def test_the_statement_parses_and_sums_to_the_ledger(stack: LocalStack) -> None:
    user = funded_user(stack, 5_000_000, reason='=HYPERLINK("http://x")')
    events = [
        {
            "action": "charge",
            "request_id": f"req-{uuid.uuid4().hex}",
            "user_id": user,
            "model": MODELS[0],
            "prompt_tokens": 80 * (n + 1),
            "completion_tokens": 0,
        }
        for n in range(5)
    ]
    meter(stack, events[:2])
    meter(stack, events[2:3])  # entries of one request and of a batch alike
    meter(stack, events[3:])
    response = stack.request("GET", "/ledger/export", token=stack.token(user))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    account = get(stack, user, "/account")
    ledger = get(stack, user, "/ledger", limit=100)["items"]
    assert sorted(r["id"] for r in rows) == sorted(e["id"] for e in ledger)
    assert sum(int(r["delta"]) for r in rows if r["balance"] == "quota") == account["quota"]
    assert [r["created_at"] for r in rows] == sorted(r["created_at"] for r in rows)
    adjustment = next(r for r in rows if r["kind"] == "adjustment")
    assert adjustment["ref"] == '\'=HYPERLINK("http://x")'  # never a formula
    # A range before any entry: the header only.
    empty = stack.request(
        "GET",
        "/ledger/export",
        token=stack.token(user),
        params={"from": "2020-01-01", "to": "2020-01-31"},
    )
    assert empty.status_code == 200
    assert list(csv.reader(io.StringIO(empty.text))) == [
        ["created_at", "id", "kind", "balance", "delta", "balance_after", "ref", "grants"]
    ]


def test_the_statement_holds_exactly_the_range_across_pages(stack: LocalStack) -> None:
    """More than a page (100) of entries in the range, and entries the day before and after:
    the export has every entry of the range once, in order, and none outside it."""
    user = funded_user(stack, 10**9)
    admin = stack.token("admin-insight", admin=True)

    def adjustments(count: int, day: int) -> None:
        for n in range(count):
            response = stack.request(
                "POST",
                f"/admin/accounts/{user}/adjust",
                token=admin,
                json={"delta": -(day * 1000 + n + 1), "reason": f"day {day} #{n}"},
            )
            assert response.status_code == 200, response.text

    adjustments(5, 0)
    stack.advance_clock(DAY)
    in_range = stack.billing_now().date().isoformat()
    adjustments(130, 1)
    stack.advance_clock(DAY)
    adjustments(5, 2)

    ledger: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = get(stack, user, "/ledger", **params)
        ledger.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(ledger) == 1 + 5 + 130 + 5
    wanted = {e["id"]: e for e in ledger if e["created_at"][:10] == in_range}
    assert len(wanted) == 130

    response = stack.request(
        "GET",
        "/ledger/export",
        token=stack.token(user),
        params={"from": in_range, "to": in_range},
    )
    assert response.status_code == 200, response.text
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 130
    assert {row["id"] for row in rows} == set(wanted)
    assert all(row["created_at"][:10] == in_range for row in rows)
    assert [int(row["delta"]) for row in rows] == [-(1000 + n + 1) for n in range(130)]
    assert sum(int(row["delta"]) for row in rows) == sum(e["delta"] for e in wanted.values())
    # The days around it hold their own entries, and only those.
    days = sorted({e["created_at"][:10] for e in ledger})
    assert len(days) == 3 and days[1] == in_range
    for day, count in ((days[0], 6), (days[2], 5)):  # the funding + 5; 5
        around = stack.request(
            "GET", "/ledger/export", token=stack.token(user), params={"from": day, "to": day}
        )
        assert len(list(csv.DictReader(io.StringIO(around.text)))) == count, day


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/usage/summary", {"group_by": "week"}),
        ("/usage/summary", {"group_by": ""}),
        ("/usage/summary", {"from": "2026-13-01"}),
        ("/usage/summary", {"from": "20261101"}),
        ("/usage/summary", {"from": "2026-11-01T00:00:00Z"}),
        ("/usage/summary", {"from": "2026-11-10", "to": "2026-11-01"}),
        ("/usage/summary", {"from": "2026-01-01", "to": "2026-04-03"}),  # 93 days
        ("/usage/summary", {"to": "yesterday"}),
        ("/ledger/export", {"from": "2026-02-30"}),
        ("/ledger/export", {"from": "2025-01-01", "to": "2026-01-02"}),  # 367 days
        ("/ledger/export", {"from": "2026-11-02", "to": "2026-11-01"}),
        ("/usage", {"from": "not-a-date"}),
        ("/usage", {"from": "2026-11-02", "to": "2026-11-01"}),
        ("/usage", {"model": "x" * 129}),
        ("/usage", {"key_id": ""}),
        ("/usage", {"limit": "0", "model": "gpt-4o"}),
    ],
)
def test_bad_query_input_is_400_and_writes_nothing(
    stack: LocalStack, path: str, params: dict[str, str]
) -> None:
    user = funded_user(stack, 1000)
    before = get(stack, user, "/account"), get(stack, user, "/ledger")
    response = stack.request("GET", path, token=stack.token(user), params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert (get(stack, user, "/account"), get(stack, user, "/ledger")) == before
    rollups = stack.boto3_client("dynamodb").query(
        TableName=stack.table_name("UsageRollupsTable"),
        KeyConditionExpression="user_id = :u",
        ExpressionAttributeValues={":u": {"S": user}},
        ConsistentRead=True,
    )
    assert rollups["Items"] == []


def test_a_92_day_range_is_accepted(stack: LocalStack) -> None:
    user = funded_user(stack, 1000)
    answer = get(stack, user, "/usage/summary", **{"from": "2026-01-01", "to": "2026-04-02"})
    assert len(answer["buckets"]) == 92


def test_the_new_routes_need_a_token(stack: LocalStack) -> None:
    for path in ("/usage/summary", "/ledger/export"):
        assert stack.request("GET", path).status_code == 401
