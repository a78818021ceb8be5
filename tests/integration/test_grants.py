"""Credit grants end to end (API.md "Credit grants"): promo codes that expire and are spent
first, the draw order, refunds that take back their own order's grant, concurrent charges
over several grants, the expiry sweeper (once, even run concurrently), GET /grants, and bad
grant objects refused with nothing written.

Expiry tests run on a stack of their own whose sweeper has no schedule (the test invokes it
through the Lambda Invoke API), so an expired grant can be seen before it is written off.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from billing.grants import grant_id_for

from tests.integration.test_metering import all_pages, get_account, usage_event
from tests.support.payments import UNIT, checkout, sandbox_refund, wait_status
from tests.support.reconcile import assert_reconciled
from tests.support.stack import LocalStack, template_copy

METER = "MeterUsageFunction"
SWEEPER = "ExpireGrantsFunction"
DAY = 86400


# ---------------------------------------------------------------- helpers


def new_account(stack: LocalStack) -> tuple[str, str]:
    user = f"grants-{uuid.uuid4().hex[:12]}"
    token = stack.token(user)
    assert stack.request("POST", "/account", token=token, json={}).status_code == 201
    return user, token


def admin(stack: LocalStack) -> str:
    return stack.token("admin-grants", admin=True)


def adjust(stack: LocalStack, user: str, delta: int, grant: Any = None) -> Any:
    body: dict[str, Any] = {"delta": delta, "reason": "grants test"}
    if grant is not None:
        body["grant"] = grant
    return stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=admin(stack),
        json=body,
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )


def promo(stack: LocalStack, user: str, delta: int, **grant: Any) -> str:
    """A promo grant by admin adjustment (no grant fields: a plain `adjustment` grant);
    returns its grant id."""
    before = {e["id"] for e in all_pages(stack, user, "/ledger")}
    response = adjust(stack, user, delta, grant or None)
    assert response.status_code == 200, response.text
    (entry,) = [e for e in all_pages(stack, user, "/ledger") if e["id"] not in before]
    return grant_id_for(entry["id"])


def top_up(stack: LocalStack, user: str, token: str, amount: int = 10) -> str:
    return str(paid_checkout(stack, token, amount)["order_id"])


def paid_checkout(stack: LocalStack, token: str, amount: int) -> dict[str, Any]:
    order = checkout(stack, token, amount)
    paid = stack.pay(order["order_id"])
    assert paid.status_code == 200 and paid.json()["webhook_status"] == 200, paid.text
    wait_status(stack, token, order["order_id"], "paid")
    return order


def charge(stack: LocalStack, user: str, quota: int) -> dict[str, Any]:
    """A charge of `quota` (gpt-4o: 1.25 per prompt token; quota divisible by 5)."""
    assert quota % 5 == 0
    result: dict[str, Any] = stack.invoke(METER, usage_event(user, prompt_tokens=quota * 4 // 5))
    return result


def entry(stack: LocalStack, user: str, entry_id: str) -> dict[str, Any]:
    (found,) = [e for e in all_pages(stack, user, "/ledger") if e["id"] == entry_id]
    return found


def grants_of(stack: LocalStack, user: str) -> dict[str, int]:
    return {g["grant_id"]: g["remaining"] for g in get_account(stack, user)["grants"]}


def assert_grant_sums(stack: LocalStack, user: str) -> None:
    """Every entry's grants sum to its delta; each grant's deltas sum to its remaining."""
    account = get_account(stack, user)
    entries = [e for e in all_pages(stack, user, "/ledger") if e["balance"] == "quota"]
    per_grant: dict[str, int] = {}
    for item in entries:
        assert sum(item["grants"].values()) == item["delta"], item
        for grant_id, delta in item["grants"].items():
            per_grant[grant_id] = per_grant.get(grant_id, 0) + delta
    shown = {g["grant_id"]: g["remaining"] for g in account["grants"]}
    for grant_id, total in per_grant.items():
        assert shown.get(grant_id, 0) == total, (grant_id, total, shown)
    assert sum(shown.values()) == account["quota"] == sum(e["delta"] for e in entries)


# ---------------------------------------------------------------- the draw order


def test_every_credit_is_a_grant_and_usage_draws_in_the_documented_order(
    stack: LocalStack,
) -> None:
    user, token = new_account(stack)
    order_id = top_up(stack, user, token, 1)  # paid, priority 50, no expiry
    paid = grant_id_for(f"topup#{order_id}")
    plain = promo(stack, user, 100)  # adjustment: non-paid, no expiry
    late = promo(stack, user, 100, expires_in_days=5)
    soon = promo(stack, user, 100, expires_in_days=2)
    first = promo(stack, user, 100, priority=10)  # lowest priority, no expiry

    sources = {g["grant_id"]: g["source"] for g in get_account(stack, user)["grants"]}
    assert sources == {
        paid: "paid",
        plain: "adjustment",
        late: "promo",
        soon: "promo",
        first: "promo",
    }
    for expected in (first, soon, late, plain):
        result = charge(stack, user, 100)
        assert result["status"] == "charged", result
        assert entry(stack, user, f"usage#{result['request_id']}")["grants"] == {expected: -100}
    result = charge(stack, user, 150)  # only the paid grant is left
    assert entry(stack, user, f"usage#{result['request_id']}")["grants"] == {paid: -150}
    assert grants_of(stack, user) == {paid: UNIT - 150}
    assert_grant_sums(stack, user)


def test_a_charge_spanning_grants_records_each_part(stack: LocalStack) -> None:
    user, _ = new_account(stack)
    a = promo(stack, user, 60, priority=1)
    b = promo(stack, user, 500, priority=2)
    result = charge(stack, user, 100)
    assert entry(stack, user, f"usage#{result['request_id']}")["grants"] == {a: -60, b: -40}
    assert_grant_sums(stack, user)


def test_a_refund_after_usage_reverses_its_own_orders_grant_first(stack: LocalStack) -> None:
    user, token = new_account(stack)
    bonus = promo(stack, user, 1000)  # non-paid: drawn before the orders
    order = paid_checkout(stack, token, 1)
    first_order = str(order["order_id"])
    stack.advance_clock(2)  # the second grant is younger (grants age in whole seconds)
    second_order = top_up(stack, user, token, 1)
    first, second = grant_id_for(f"topup#{first_order}"), grant_id_for(f"topup#{second_order}")
    used = charge(stack, user, 1100)
    assert entry(stack, user, f"usage#{used['request_id']}")["grants"] == {
        bonus: -1000,
        first: -100,
    }
    sandbox_refund(stack, order)  # all of it back
    wait_status(stack, token, first_order, "refunded")
    reversal = [e for e in all_pages(stack, user, "/ledger") if e["kind"] == "reversal"]
    assert len(reversal) == 1
    # its own grant first (what is left of it), then draw order: the other order's grant
    assert reversal[0]["grants"] == {first: -(UNIT - 100), second: -100}
    assert grants_of(stack, user) == {second: UNIT - 100}
    assert_grant_sums(stack, user)


def test_fifty_concurrent_charges_over_five_grants_never_overdraw_a_grant(
    stack: LocalStack,
) -> None:
    user, _ = new_account(stack)
    grants = [promo(stack, user, 1000, priority=priority) for priority in (5, 10, 20, 30, 40)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: charge(stack, user, 100), range(60)))
    charged = [r for r in results if r["status"] == "charged"]
    refused = [r for r in results if r["status"] == "rejected"]
    assert len(charged) == 50 and len(refused) == 10
    assert {r["error"] for r in refused} == {"insufficient_quota"}
    account = get_account(stack, user)
    assert account["quota"] == 0 and account["grants"] == []
    per_grant: dict[str, int] = {}
    for item in all_pages(stack, user, "/ledger"):
        assert sum(item["grants"].values()) == item["delta"]
        for grant_id, delta in item["grants"].items():
            per_grant[grant_id] = per_grant.get(grant_id, 0) + delta
    assert per_grant == dict.fromkeys(grants, 0)  # each credited 1000, drawn 1000, no more
    listed = all_pages(stack, user, "/grants")
    assert {g["grant_id"]: (g["remaining"], g["status"]) for g in listed} == dict.fromkeys(
        grants, (0, "exhausted")
    )


# ---------------------------------------------------------------- GET /grants


def test_grants_are_listed_newest_first_in_signed_pages(stack: LocalStack) -> None:
    user, token = new_account(stack)
    made = [promo(stack, user, 10 + i) for i in range(5)]
    first = stack.request("GET", "/grants?limit=2", token=token)
    assert first.status_code == 200, first.text
    page = first.json()
    assert [g["grant_id"] for g in page["items"]] == made[::-1][:2]
    listed = all_pages(stack, user, "/grants")
    assert [g["grant_id"] for g in listed] == made[::-1]
    assert [g["amount"] for g in listed] == [14, 13, 12, 11, 10]
    assert all(g["source"] == "adjustment" and g["status"] == "active" for g in listed)
    assert all(g["ref"].startswith("adjustment#") for g in listed)
    other = stack.token(f"grants-{uuid.uuid4().hex[:8]}")
    stolen = stack.request("GET", f"/grants?cursor={page['next_cursor']}", token=other)
    assert stolen.status_code == 400
    forged = stack.request("GET", "/grants?cursor=abc.def", token=token)
    assert forged.status_code == 400


# ---------------------------------------------------------------- bad grant objects

BAD_GRANTS: list[Any] = [
    {"priority": -1},
    {"priority": 101},
    {"priority": "5"},
    {"priority": 5.0},
    {"priority": True},
    {"expires_in_days": 0},
    {"expires_in_days": 1.5},
    {"expires_in_days": "3"},
    {"expires_in_days": 3, "expires_at": "2099-01-01T00:00:00Z"},
    {"expires_at": "2001-01-01T00:00:00Z"},
    {"expires_at": "next week"},
    {"expires_at": 1893456000},
    {"colour": "red"},
    "promo",
    [1],
]


@pytest.mark.parametrize("grant", BAD_GRANTS)
def test_a_bad_grant_on_an_adjustment_is_400_and_writes_nothing(
    stack: LocalStack, grant: Any
) -> None:
    user, _ = new_account(stack)
    response = adjust(stack, user, 500, grant)
    assert response.status_code == 400, response.text
    assert get_account(stack, user)["quota"] == 0
    assert all_pages(stack, user, "/ledger") == []
    assert all_pages(stack, user, "/grants") == []


def test_a_grant_with_a_negative_adjustment_is_400(stack: LocalStack) -> None:
    user, _ = new_account(stack)
    promo(stack, user, 500)
    response = adjust(stack, user, -100, {"priority": 3})
    assert response.status_code == 400, response.text
    assert get_account(stack, user)["quota"] == 500


@pytest.mark.parametrize("grant", BAD_GRANTS)
def test_a_bad_grant_on_a_code_batch_is_400_and_writes_nothing(
    stack: LocalStack, grant: Any
) -> None:
    name = f"bad-grant-{uuid.uuid4().hex[:8]}"
    response = stack.request(
        "POST",
        "/admin/redemption-codes",
        token=admin(stack),
        json={"name": name, "quota": 100, "count": 1, "grant": grant},
    )
    assert response.status_code == 400, response.text
    table = stack.table_name("RedemptionCodesTable")
    found = stack.boto3_client("dynamodb").scan(
        TableName=table,
        FilterExpression="#n = :n",
        ExpressionAttributeNames={"#n": "name"},
        ExpressionAttributeValues={":n": {"S": name}},
        ConsistentRead=True,
    )
    assert found["Items"] == []


# ---------------------------------------------------------------- expiry


def _without_sweeper_schedule(document: dict[str, Any]) -> None:
    document["Resources"]["ExpireGrantsFunction"]["Properties"].pop("Events")


@pytest.fixture(scope="module")
def manual_sweeper() -> Iterator[LocalStack]:
    """A stack whose sweeper runs only when invoked, so expired-but-unswept can be seen."""
    template = template_copy("grants-manual-sweeper", _without_sweeper_schedule)
    with LocalStack("grants-manual-sweeper") as local:
        local.start(template)
        yield local
        assert_reconciled(local)


def redeem_promo_code(stack: LocalStack, token: str, quota: int, **grant: Any) -> str:
    created = stack.request(
        "POST",
        "/admin/redemption-codes",
        token=admin(stack),
        json={"name": "promo", "quota": quota, "count": 1, "grant": grant},
    )
    assert created.status_code == 201, created.text
    (code,) = created.json()["codes"]
    redeemed = stack.request("POST", "/redeem", token=token, json={"code": code})
    assert redeemed.status_code == 200, redeemed.text
    return str(code)


def test_a_promo_code_is_drawn_first_then_expires_and_is_written_off_once(
    manual_sweeper: LocalStack,
) -> None:
    stack = manual_sweeper
    user, token = new_account(stack)
    redeem_promo_code(stack, token, 1000, expires_in_days=1)
    order_id = top_up(stack, user, token, 1)
    paid = grant_id_for(f"topup#{order_id}")
    (promo_entry,) = [e for e in all_pages(stack, user, "/ledger") if e["kind"] == "redeem"]
    promo_grant = grant_id_for(promo_entry["id"])
    assert promo_entry["grants"] == {promo_grant: 1000}

    account = get_account(stack, user)
    shown = {g["grant_id"]: g for g in account["grants"]}
    assert shown[promo_grant]["source"] == "code" and shown[paid]["source"] == "paid"
    assert shown[promo_grant]["expires_at"] is not None and shown[paid]["expires_at"] is None
    assert account["expiring_quota"]["quota"] == 1000

    used = charge(stack, user, 100)
    assert entry(stack, user, f"usage#{used['request_id']}")["grants"] == {promo_grant: -100}

    stack.advance_clock(DAY + 60)
    # expired, not swept yet: still in quota, never drawn, not spendable
    account = get_account(stack, user)
    assert account["quota"] == UNIT + 900
    assert promo_grant not in {g["grant_id"] for g in account["grants"]}
    used = charge(stack, user, 100)
    assert entry(stack, user, f"usage#{used['request_id']}")["grants"] == {paid: -100}
    too_much = charge(stack, user, UNIT)  # above the paid grant's UNIT - 100
    assert too_much["status"] == "rejected" and too_much["error"] == "insufficient_quota"

    with ThreadPoolExecutor(max_workers=2) as pool:
        summaries = list(pool.map(lambda _: stack.invoke(SWEEPER, {}), range(2)))
    assert sum(s["written_off"] for s in summaries) == 1
    assert stack.invoke(SWEEPER, {})["written_off"] == 0  # a re-run writes nothing
    expiries = [e for e in all_pages(stack, user, "/ledger") if e["kind"] == "expiry"]
    assert len(expiries) == 1
    assert expiries[0]["id"] == f"expiry#{promo_grant}"
    assert expiries[0]["delta"] == -900 and expiries[0]["grants"] == {promo_grant: -900}
    account = get_account(stack, user)
    assert account["quota"] == UNIT - 100
    assert grants_of(stack, user) == {paid: UNIT - 100}
    history = {g["grant_id"]: g for g in all_pages(stack, user, "/grants")}
    assert history[promo_grant]["status"] == "expired" and history[promo_grant]["remaining"] == 0
    assert_grant_sums(stack, user)


def test_a_fixed_expiry_and_an_exhausted_grant_leave_the_index_without_an_entry(
    manual_sweeper: LocalStack,
) -> None:
    stack = manual_sweeper
    user, token = new_account(stack)
    at = (stack.billing_now() + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    redeem_promo_code(stack, token, 200, expires_at=at)
    adjust(stack, user, 50, {"expires_in_days": 1})
    charge(stack, user, 200)  # takes the code's grant (nearest expiry) whole
    stack.advance_clock(DAY + 60)
    summary = stack.invoke(SWEEPER, {})
    assert summary["written_off"] == 1  # the adjustment's 50; the empty code grant has nothing
    expiries = [e for e in all_pages(stack, user, "/ledger") if e["kind"] == "expiry"]
    assert [e["delta"] for e in expiries] == [-50]
    assert get_account(stack, user)["quota"] == 0
    assert_grant_sums(stack, user)


def test_a_grant_written_just_before_the_clock_moves_is_swept_when_it_moves(
    stack: LocalStack,
) -> None:
    """Hours of billing time pass in an instant here: the schedules that came due run only
    once the sweeper's index has caught up with the grant written a moment before (as it
    would have in AWS hours later), so the write-off is done when POST /_local/clock answers."""
    user, _ = new_account(stack)
    adjust(stack, user, 70, {"expires_in_days": 1})
    stack.advance_clock(DAY + 60)
    expiries = [e for e in all_pages(stack, user, "/ledger") if e["kind"] == "expiry"]
    assert [e["delta"] for e in expiries] == [-70]
    assert get_account(stack, user)["quota"] == 0
    assert_grant_sums(stack, user)


def test_a_grant_expiring_within_three_days_is_announced_once(
    manual_sweeper: LocalStack,
) -> None:
    """grant.expiring: once per grant and expiry, under concurrent and repeated sweeps; not
    for a grant further out, nor for one already drawn to nothing."""
    from tests.support.billing_events import settle_stream, user_events

    stack = manual_sweeper
    user, token = new_account(stack)
    redeem_promo_code(stack, token, 300, expires_in_days=2)
    adjust(stack, user, 70, {"expires_in_days": 10})
    top_up(stack, user, token, 1)  # never expires
    (code_entry,) = [e for e in all_pages(stack, user, "/ledger") if e["kind"] == "redeem"]
    soon = grant_id_for(code_entry["id"])

    # (other tests' accounts share this stack: the events are counted per user)
    with ThreadPoolExecutor(max_workers=3) as pool:
        summaries = list(pool.map(lambda _: stack.invoke(SWEEPER, {}), range(3)))
    assert sum(s["notices_sent"] for s in summaries) >= 1, summaries
    stack.invoke(SWEEPER, {})  # a re-run announces nothing again
    settle_stream(stack)
    (event,) = user_events(stack, user, "grant.expiring")
    assert event["grant_id"] == soon and event["remaining"] == 300 and event["source"] == "code"
    assert event["quota"] == get_account(stack, user)["quota"]
    expires = datetime.strptime(event["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    expected = stack.billing_now().replace(tzinfo=None) + timedelta(days=2)
    assert abs((expires - expected).total_seconds()) < 600

    # 8 days on, the adjustment's grant (10 days) is within 3 days: its own notice, once
    stack.advance_clock(8 * DAY)
    stack.invoke(SWEEPER, {})
    stack.invoke(SWEEPER, {})
    settle_stream(stack)
    notices = user_events(stack, user, "grant.expiring")
    assert [n["remaining"] for n in notices] == [300, 70]
    assert len({n["id"] for n in notices}) == 2


def test_an_exhausted_grant_is_not_announced(manual_sweeper: LocalStack) -> None:
    stack = manual_sweeper
    user, token = new_account(stack)
    redeem_promo_code(stack, token, 100, expires_in_days=1)
    charge(stack, user, 100)
    stack.invoke(SWEEPER, {})
    from tests.support.billing_events import settle_stream, user_events

    settle_stream(stack)
    assert user_events(stack, user, "grant.expiring") == []


def test_the_admin_cli_creates_promo_codes(stack: LocalStack, tmp_path: Path) -> None:
    from tests.integration.test_redemption import cli

    out = tmp_path / "promo.csv"
    done = cli(
        stack,
        "codes", "create", "--name", f"cli-promo-{uuid.uuid4().hex[:6]}", "--quota", "700",
        "--count", "1", "--grant-expires-in-days", "3", "--grant-priority", "7", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = list(csv.DictReader(out.open(newline="")))
    user, token = new_account(stack)
    redeemed = stack.request("POST", "/redeem", token=token, json={"code": row["code"]})
    assert redeemed.status_code == 200, redeemed.text
    (grant,) = get_account(stack, user)["grants"]
    assert (grant["source"], grant["priority"], grant["remaining"]) == ("code", 7, 700)
    expires = datetime.fromisoformat(grant["expires_at"].replace("Z", "+00:00"))
    assert (
        timedelta(days=3) - timedelta(minutes=5)
        < expires - stack.billing_now()
        <= timedelta(days=3)
    )
    refused = cli(
        stack,
        "codes", "create", "--name", "cli-bad", "--quota", "1", "--count", "1",
        "--grant-priority", "500", "--out", str(tmp_path / "bad.csv"),
    )  # fmt: skip
    assert refused.returncode == 1 and not (tmp_path / "bad.csv").exists()


def test_the_statements_grants_column_sums_to_each_rows_delta(stack: LocalStack) -> None:
    """A charge that spans a promo grant and a paid one: the CSV statement's per-grant column
    names both, and on every quota row it parses and sums to the row's delta."""
    import io
    import json

    user, token = new_account(stack)
    order_id = top_up(stack, user, token, 1)
    paid = grant_id_for(f"topup#{order_id}")
    soon = promo(stack, user, 100, expires_in_days=2)  # drawn first
    assert charge(stack, user, 150)["status"] == "charged"

    response = stack.request("GET", "/ledger/export", token=token)
    assert response.status_code == 200, response.text
    rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
    quota_rows = [row for row in rows if row["balance"] == "quota" and int(row["delta"])]
    assert {row["kind"] for row in quota_rows} >= {"topup", "adjustment", "usage"}
    for row in quota_rows:
        per_grant = json.loads(row["grants"])
        assert sum(per_grant.values()) == int(row["delta"]), row
    (usage,) = [row for row in quota_rows if row["kind"] == "usage"]
    assert json.loads(usage["grants"]) == {soon: -100, paid: -50}
    assert int(usage["delta"]) == -150
