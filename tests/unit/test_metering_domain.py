"""The metering domain on the embedded tables: aggregation per user, chunking, admission in
input order, holds, the sweeper (with an explicit `now`) and transient failures.

The same behaviour is tested end to end through the Invoke API in
tests/integration/test_metering.py; here the domain is driven directly so that the number
of account writes, the chunking and the sweeper's clock can be observed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from billing import clock, db, ledger
from billing.errors import InvalidRequest, NotFound
from billing.models import Account, LedgerEntry, UsageRecord, usage_of_user
from billing.referral import signup
from billing.settings import parse_settings
from billing.usage import intake, metering, unbilled
from billing.usage.metering import Action, UsageEvent

from local.aws import EmbeddedAws, Fault
from tests.support.embedded_tables import embedded_tables
from tests.support.metering import delivery_orders, expected_statuses, final_status

ROOT = Path(__file__).resolve().parents[2]


def _document(**extra_ratios: str) -> str:
    document = json.loads((ROOT / "settings" / "local.json").read_text())
    # "unit": one quota per token, so the expected numbers are the token counts.
    document["pricing"] = {
        "model_ratios": {"unit": "1", "free": "0", **extra_ratios},
        "completion_ratios": {"unit": "1"},
        "group_ratios": {"default": "1", "half": "0.5"},
        "default_group": "default",
    }
    document["limits"]["hold_ttl_seconds"] = 60
    return json.dumps(document)


SETTINGS = parse_settings(_document())
# The settings once an admin has priced the model "later" (one quota per token too).
FIXED = parse_settings(_document(later="1"))


# Seconds a write stays invisible to indexes and eventually consistent reads on the embedded
# AWS (as in AWS, where a GSI can never be read consistently); set once it has started.
INDEX_LAG = 0.0


def wait_for_indexes() -> None:
    """Let the indexes catch up with every write made so far, before a read through one."""
    time.sleep(INDEX_LAG + 0.05)


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedAws]:
    global INDEX_LAG
    with embedded_tables() as embedded:
        assert embedded.strictness is not None
        INDEX_LAG = embedded.strictness.index_lag_ms / 1000
        # The unbilled-usage model lives in its subdomain; point it at the template's table.
        unbilled.UnbilledUsage.Meta.table_name = "quota-local-UnbilledUsageTable"
        unbilled.UnbilledUsage.Meta.host = Account.Meta.host
        unbilled.UnbilledUsage._connection = None
        # What the intake loads (as the function would from SSM).
        settings_file = tmp_path_factory.mktemp("settings") / "settings.json"
        settings_file.write_text(_document())
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SETTINGS_FILE", str(settings_file))
            yield embedded


@pytest.fixture(autouse=True)
def _tables(aws: EmbeddedAws) -> Iterator[None]:
    yield
    aws.registry.clear()


def new_user(quota: int = 0) -> str:
    user_id = f"u-{uuid.uuid4().hex[:12]}"
    signup.create_account(user_id, None)
    if quota:
        ledger.apply([ledger.Change(user_id, f"topup#{user_id}", ledger.EntryKind.TOPUP, quota)])
    return user_id


def event(
    action: str, user: str, request_id: str | None = None, tokens: int = 10, model: str = "unit"
) -> UsageEvent:
    return UsageEvent(
        action=Action(action),
        request_id=request_id or uuid.uuid4().hex,
        user_id=user,
        model=model,
        prompt_tokens=tokens,
        completion_tokens=0,
    )


def meter(*events: UsageEvent, **kwargs: Any) -> list[dict[str, Any]]:
    outcome = metering.meter(list(events), **{"settings": SETTINGS, **kwargs})
    assert outcome.complete, outcome.errors
    return [result for result in outcome.results if result is not None]


def account(user: str) -> Account:
    return Account.get(user, consistent_read=True)


def assert_consistent(user: str) -> Account:
    """Ledger sums to the balance; held_quota is the sum of the open holds."""
    found = account(user)
    entries = list(LedgerEntry.query(user, consistent_read=True))
    assert sum(int(e.delta) for e in entries if e.balance == "quota") == int(found.quota)
    wait_for_indexes()  # the holds are read through by_user_shard, a GSI
    open_holds = sum(
        int(r.hold_quota)
        for r in usage_of_user(user, SETTINGS.usage.user_shards)
        if r.status == metering.Status.RESERVED
    )
    assert int(found.held_quota) == open_holds
    return found


def test_a_batch_of_100_for_one_user_takes_two_account_writes() -> None:
    user = new_user(10_000)
    version = int(account(user).version)
    results = meter(*(event("charge", user, tokens=7) for _ in range(100)))
    assert [r["status"] for r in results] == ["charged"] * 100
    # Balances in input order, as if applied one by one.
    assert [r["balance"] for r in results] == [10_000 - 7 * (i + 1) for i in range(100)]
    found = assert_consistent(user)
    assert int(found.version) - version == 2  # 50 events per account write
    assert int(found.quota) == 10_000 - 700
    assert int(found.used_quota) == 700 and int(found.request_count) == 100
    usage_entries = [e for e in LedgerEntry.query(user, consistent_read=True) if e.kind == "usage"]
    assert len(usage_entries) == 2
    assert sorted(-int(e.delta) for e in usage_entries) == [21, 679]  # 3 and 97 events


def test_500_events_for_one_user_fill_transactions_of_at_most_100_items() -> None:
    user = new_user(1_000_000)
    version = int(account(user).version)
    results = meter(*(event("charge", user, tokens=3) for _ in range(500)))
    assert all(r["status"] == "charged" for r in results)
    found = assert_consistent(user)
    assert int(found.version) - version == 6  # ceil(500 / 97)
    assert int(found.request_count) == 500 and int(found.used_quota) == 1500


def test_many_users_in_one_batch_each_get_one_account_write() -> None:
    users = [new_user(100) for _ in range(5)]
    versions = {user: int(account(user).version) for user in users}
    batch = [event("charge", users[i % 5], tokens=10) for i in range(40)]
    results = meter(*batch)
    assert [r["request_id"] for r in results] == [e.request_id for e in batch]
    for user in users:
        found = assert_consistent(user)
        assert int(found.quota) == 100 - 80
        assert int(found.version) - versions[user] == 1


def test_admission_is_in_input_order_against_the_balance() -> None:
    user = new_user(100)
    batch = [event("charge", user, tokens=t) for t in (40, 40, 40, 10, 30)]
    results = meter(*batch)
    assert [r["status"] for r in results] == [
        "charged", "charged", "rejected", "charged", "rejected",
    ]  # fmt: skip
    assert results[2]["error"] == "insufficient_quota" and results[2]["balance"] == 20
    assert results[3]["balance"] == 10
    found = assert_consistent(user)
    assert int(found.quota) == 10 and int(found.request_count) == 3
    # Nothing was written for the refused events.
    assert UsageRecord.count(batch[2].request_id, consistent_read=True) == 0


def test_same_request_id_five_times_in_one_batch_charges_once() -> None:
    user = new_user(1000)
    request_id = "dup-" + uuid.uuid4().hex
    results = meter(*(event("charge", user, request_id, tokens=25) for _ in range(5)))
    assert [r["status"] for r in results] == ["charged"] + ["duplicate"] * 4
    assert all(r["balance"] == 975 and r["quota"] == 25 for r in results)
    found = assert_consistent(user)
    assert int(found.quota) == 975 and int(found.request_count) == 1


def test_a_duplicate_found_by_the_transaction_is_removed_and_the_chunk_retried() -> None:
    user = new_user(1000)
    batch = [event("charge", user, tokens=10) for _ in range(6)]
    meter(batch[2], batch[4])
    results = meter(*batch)
    assert [r["status"] for r in results] == [
        "charged", "charged", "duplicate", "charged", "duplicate", "charged",
    ]  # fmt: skip
    assert results[2]["first_status"] == "charged"
    found = assert_consistent(user)
    assert int(found.quota) == 1000 - 60 and int(found.request_count) == 6


def test_a_replayed_batch_changes_nothing() -> None:
    user = new_user(1000)
    batch = [event("charge", user, tokens=10) for _ in range(30)]
    first = meter(*batch)
    before = account(user)
    again = meter(*batch)
    assert [r["status"] for r in again] == ["duplicate"] * 30
    assert [r["balance"] for r in again] == [r["balance"] for r in first]
    after = assert_consistent(user)
    assert int(after.quota) == int(before.quota) and int(after.version) == int(before.version)


def test_reserve_then_settle_higher_goes_negative_by_the_excess_only() -> None:
    user = new_user(100)
    request_id = uuid.uuid4().hex
    (reserved,) = meter(event("reserve", user, request_id, tokens=100))
    assert reserved["status"] == "reserved" and reserved["quota"] == 100
    assert int(account(user).held_quota) == 100 and int(account(user).quota) == 100
    # The hold takes all of the available balance: a charge is refused meanwhile.
    (refused,) = meter(event("charge", user, tokens=1))
    assert refused["error"] == "insufficient_quota"
    (settled,) = meter(event("settle", user, request_id, tokens=130))
    assert settled["status"] == "settled" and settled["quota"] == 130
    assert settled["balance"] == -30
    found = assert_consistent(user)
    assert int(found.quota) == -30 and int(found.held_quota) == 0
    assert int(found.used_quota) == 130 and int(found.request_count) == 1
    record = UsageRecord.get(request_id, consistent_read=True)
    assert record.status == "settled" and record.hold_shard is None
    assert int(record.quota) == 130 and int(record.prompt_tokens) == 130


def test_reserve_then_release_restores_the_start() -> None:
    user = new_user(500)
    start = account(user)
    request_id = uuid.uuid4().hex
    meter(event("reserve", user, request_id, tokens=200))
    (released,) = meter(event("release", user, request_id))
    assert released["status"] == "released" and released["quota"] == 200
    found = assert_consistent(user)
    assert int(found.quota) == int(start.quota) == 500
    assert int(found.held_quota) == 0
    assert int(found.used_quota) == 0 and int(found.request_count) == 0
    (again,) = meter(event("release", user, request_id))
    assert again["status"] == "duplicate"


def test_a_reserve_is_refused_when_holds_take_the_available_balance() -> None:
    user = new_user(100)
    first, second, third = meter(
        event("reserve", user, tokens=60),
        event("reserve", user, tokens=60),
        event("reserve", user, tokens=40),
    )
    assert first["status"] == "reserved"
    assert second["status"] == "rejected" and second["error"] == "insufficient_quota"
    assert third["status"] == "reserved"
    assert int(assert_consistent(user).held_quota) == 100


def test_settle_below_zero_after_charges_in_one_batch() -> None:
    user = new_user(100)
    hold = uuid.uuid4().hex
    meter(event("reserve", user, hold, tokens=50))
    # charge 30 (available 50 -> 20), settle 200 (the usage happened): two transactions,
    # since one transaction with the charge must not end below zero.
    charged, settled, refused = meter(
        event("charge", user, tokens=30),
        event("settle", user, hold, tokens=200),
        event("charge", user, tokens=1),
    )
    assert (charged["status"], settled["status"]) == ("charged", "settled")
    assert refused["error"] == "insufficient_quota"
    found = assert_consistent(user)
    assert int(found.quota) == 100 - 30 - 200 and int(found.held_quota) == 0
    assert settled["balance"] == -130


def test_reserve_and_settle_in_one_batch() -> None:
    user = new_user(1000)
    request_id = uuid.uuid4().hex
    reserved, settled, again = meter(
        event("reserve", user, request_id, tokens=300),
        event("settle", user, request_id, tokens=120),
        event("settle", user, request_id, tokens=999),
    )
    assert reserved["status"] == "reserved"
    assert settled["status"] == "settled" and settled["balance"] == 880
    assert again["status"] == "duplicate" and again["quota"] == 120
    assert int(assert_consistent(user).quota) == 880


def test_wrong_action_order_and_foreign_request_ids_are_invalid() -> None:
    user, other = new_user(1000), new_user(1000)
    charged_id, reserved_id = uuid.uuid4().hex, uuid.uuid4().hex
    meter(event("charge", user, charged_id), event("reserve", user, reserved_id))
    before = {u: account(u) for u in (user, other)}
    results = meter(
        event("release", user, charged_id),  # charged, not reserved
        event("reserve", user, charged_id),  # request_id already used to charge
        event("charge", user, reserved_id),  # request_id holds a reservation
        event("charge", other, charged_id),  # another user's request_id
        event("settle", other, reserved_id),  # another user's hold
    )
    assert [r["error"] for r in results] == ["invalid_event"] * 5
    assert "request_id" in results[3]["message"] and "balance" not in str(results[3]["message"])
    for u in (user, other):
        found = assert_consistent(u)
        assert int(found.version) == int(before[u].version)


def test_unknown_model_group_and_account_are_refused() -> None:
    user = new_user(1000)
    results = meter(
        event("charge", user, model="no-such-model"),
        UsageEvent(Action.CHARGE, uuid.uuid4().hex, user, "unit", 1, 1, group="gold"),
        event("charge", "nobody-" + uuid.uuid4().hex),
    )
    assert [r["error"] for r in results] == ["unknown_model", "invalid_event", "account_not_found"]
    assert int(account(user).version) == 1


def test_free_usage_counts_requests_without_a_ledger_entry() -> None:
    user = new_user(0)
    (result,) = meter(event("charge", user, model="free", tokens=5000))
    assert result["status"] == "charged" and result["quota"] == 0
    found = assert_consistent(user)
    assert int(found.request_count) == 1 and int(found.quota) == 0


def test_the_sweeper_releases_only_expired_holds() -> None:
    user = new_user(1000)
    old, fresh = uuid.uuid4().hex, uuid.uuid4().hex
    start = clock.now()
    meter(event("reserve", user, old, tokens=100), now=start - timedelta(seconds=120))
    meter(event("reserve", user, fresh, tokens=50), now=start)
    assert int(account(user).held_quota) == 150
    wait_for_indexes()  # the sweeper finds holds through open_holds, a GSI
    summary = metering.release_expired(settings=SETTINGS, now=start + timedelta(seconds=1))
    assert summary["released"] >= 1
    assert UsageRecord.get(old, consistent_read=True).status == "expired"
    assert UsageRecord.get(fresh, consistent_read=True).status == "reserved"
    found = assert_consistent(user)
    assert int(found.held_quota) == 50 and int(found.quota) == 1000
    # A client's release after the sweeper's is a duplicate of it.
    (late_release,) = meter(event("release", user, old))
    assert late_release["status"] == "duplicate" and late_release["first_status"] == "released"
    # Running the sweeper again releases nothing more.
    metering.release_expired(settings=SETTINGS, now=start + timedelta(seconds=1))
    assert int(assert_consistent(user).held_quota) == 50


def test_a_late_settle_after_expiry_still_charges_the_usage() -> None:
    user = new_user(100)
    request_id = uuid.uuid4().hex
    start = clock.now()
    meter(event("reserve", user, request_id, tokens=80), now=start - timedelta(seconds=120))
    wait_for_indexes()
    metering.release_expired(settings=SETTINGS, now=start)
    (settled,) = meter(event("settle", user, request_id, tokens=90))
    assert settled["status"] == "settled" and settled["balance"] == 10
    found = assert_consistent(user)
    assert int(found.quota) == 10 and int(found.held_quota) == 0
    assert int(found.used_quota) == 90


def test_a_transient_failure_leaves_that_users_events_unmetered(aws: EmbeddedAws) -> None:
    healthy, broken = new_user(1000), new_user(1000)
    aws.registry.add(
        Fault(
            service="dynamodb",
            operation="TransactWriteItems",
            error_code="ValidationException",
            count=-1,
            contains=broken,
        )
    )
    batch = [event("charge", healthy), event("charge", broken), event("charge", healthy)]
    outcome = metering.meter(batch, settings=SETTINGS)
    assert not outcome.complete and outcome.errors
    assert outcome.results[1] is None
    assert [outcome.results[i]["status"] for i in (0, 2)] == ["charged", "charged"]  # type: ignore[index]
    aws.registry.clear()
    # The retry of the whole batch: the written events are duplicates, the rest applies.
    retried = meter(*batch)
    assert [r["status"] for r in retried] == ["duplicate", "charged", "duplicate"]
    assert int(assert_consistent(broken).quota) == 990
    assert int(assert_consistent(healthy).quota) == 980


def test_a_repeated_request_id_keeps_the_users_input_order() -> None:
    user = new_user(1000)
    hold = uuid.uuid4().hex
    results = meter(
        event("charge", user, tokens=100),
        event("reserve", user, hold, tokens=300),
        event("settle", user, hold, tokens=200),  # a repeat: written after the reserve
        event("charge", user, tokens=50),  # ... and this one after the settle
    )
    assert [r["status"] for r in results] == ["charged", "reserved", "settled", "charged"]
    assert [r["balance"] for r in results] == [900, 900, 700, 650]
    found = assert_consistent(user)
    assert int(found.quota) == 650 and int(found.request_count) == 3


def test_a_lost_acknowledgement_is_not_reported_as_a_duplicate() -> None:
    """The transaction commits, the reply is lost and botocore sends it again: the retry is
    cancelled (the record exists), yet the caller gets its own result, not `duplicate`."""
    user = new_user(1000)
    client = db.connection().client
    resent: list[int] = []

    def resend_once(attempts: int, **_: Any) -> int | None:
        if not resent:
            resent.append(attempts)
            return 0  # retry at once, as after a lost reply
        return None

    client.meta.events.register("needs-retry.dynamodb.TransactWriteItems", resend_once)
    try:
        batch = [event("charge", user, tokens=10) for _ in range(3)]
        results = meter(*batch)
    finally:
        client.meta.events.unregister("needs-retry.dynamodb.TransactWriteItems", resend_once)
    assert resent, "the transaction was not sent twice"
    assert [r["status"] for r in results] == ["charged"] * 3
    assert [r["balance"] for r in results] == [990, 980, 970]
    found = assert_consistent(user)
    assert int(found.quota) == 970 and int(found.request_count) == 3
    # A real duplicate is still one.
    assert [r["status"] for r in meter(batch[0])] == ["duplicate"]


def test_a_repeat_the_balance_could_not_pay_again_is_still_a_duplicate() -> None:
    user = new_user(1000)
    first = event("charge", user, tokens=700)
    hold = event("reserve", user, tokens=200)
    (charged,) = meter(first)
    meter(hold)
    # The balance (100 available) could pay for neither again: both are duplicates, not
    # refusals, alone or in a batch, and nothing changes.
    before = account(user)
    results = [*meter(first), *meter(hold), *meter(first, hold, event("charge", user, tokens=50))]
    assert [r["status"] for r in results] == ["duplicate", "duplicate", "duplicate", "duplicate",
                                              "charged"]  # fmt: skip
    assert results[0]["balance"] == charged["balance"] == 300
    found = assert_consistent(user)
    assert int(found.quota) == int(before.quota) - 50 and int(found.request_count) == 2


# ---------------------------------------------------------------- any delivery order


def test_a_settle_before_its_reserve_bills_in_full_and_the_late_reserve_changes_nothing() -> None:
    user = new_user(50)
    request_id = uuid.uuid4().hex
    (settled,) = meter(event("settle", user, request_id, tokens=120))
    # No hold to replace: all of it is charged, below zero as a settle may.
    assert (settled["status"], settled["quota"], settled["balance"]) == ("settled", 120, -70)
    before = account(user)
    late_reserve, late_release = (
        meter(event("reserve", user, request_id, tokens=300)),
        meter(event("release", user, request_id)),
    )
    for (late,) in (late_reserve, late_release):
        assert late["status"] == "duplicate" and late["first_status"] == "settled"
        assert (late["quota"], late["balance"]) == (120, -70)
    found = assert_consistent(user)
    assert int(found.version) == int(before.version)
    assert (int(found.quota), int(found.held_quota), int(found.used_quota)) == (-70, 0, 120)
    assert int(found.request_count) == 1
    record = UsageRecord.get(request_id, consistent_read=True)
    assert (record.status, int(record.quota), int(record.hold_quota)) == ("settled", 120, 0)


def test_a_release_before_its_reserve_leaves_nothing_held() -> None:
    user = new_user(1000)
    request_id = uuid.uuid4().hex
    (released,) = meter(event("release", user, request_id))
    assert (released["status"], released["quota"], released["balance"]) == ("released", 0, 1000)
    (late,) = meter(event("reserve", user, request_id, tokens=300))
    assert late["status"] == "duplicate" and late["first_status"] == "released"
    found = assert_consistent(user)
    assert int(found.held_quota) == 0 and int(found.quota) == 1000
    record = UsageRecord.get(request_id, consistent_read=True)
    assert (record.status, record.hold_shard) == ("released", None)
    # The settle, whenever it comes, still bills the usage (in full: nothing is held).
    (settled,) = meter(event("settle", user, request_id, tokens=120))
    assert (settled["status"], settled["balance"]) == ("settled", 880)
    assert int(assert_consistent(user).used_quota) == 120


def test_a_settle_after_a_release_bills_the_usage_without_the_dropped_hold() -> None:
    user = new_user(1000)
    request_id = uuid.uuid4().hex
    meter(event("reserve", user, request_id, tokens=300), event("release", user, request_id))
    assert int(account(user).held_quota) == 0
    (settled,) = meter(event("settle", user, request_id, tokens=120))
    assert (settled["status"], settled["balance"]) == ("settled", 880)
    found = assert_consistent(user)
    assert (int(found.quota), int(found.held_quota), int(found.request_count)) == (880, 0, 1)


HOLD_TOKENS, SETTLE_TOKENS, START = 300, 120, 1000


def assert_billed_by_what_arrived(user: str, request_id: str, order: Sequence[str]) -> None:
    """The outcome depends only on which actions arrived, never on their order."""
    found = assert_consistent(user)
    record = UsageRecord.get(request_id, consistent_read=True)
    outcome = {
        "settled": (START - SETTLE_TOKENS, 0, SETTLE_TOKENS, 1, "settled"),
        "released": (START, 0, 0, 0, "released"),
        "reserved": (START, HOLD_TOKENS, 0, 0, "reserved"),
    }[final_status(order)]
    assert (
        int(found.quota),
        int(found.held_quota),
        int(found.used_quota),
        int(found.request_count),
        record.status,
    ) == outcome, order


def _events(user: str, request_id: str, order: Sequence[str]) -> list[UsageEvent]:
    tokens = {"reserve": HOLD_TOKENS, "settle": SETTLE_TOKENS, "release": 0}
    return [event(action, user, request_id, tokens=tokens[action]) for action in order]


@pytest.mark.parametrize("order", delivery_orders(), ids="-".join)
def test_any_delivery_order_bills_what_happened_once(order: tuple[str, ...]) -> None:
    if len(order) <= 3:
        # One event per call, in this order (a batch repeats each request_id in a wave of its
        # own, which is the same path; the long orders take only the batch) ...
        user, request_id = new_user(START), uuid.uuid4().hex
        results = [meter(e)[0] for e in _events(user, request_id, order)]
        assert [r["status"] for r in results] == expected_statuses(order)
        assert_billed_by_what_arrived(user, request_id, order)
    # ... and all of them in one batch, in the same order.
    user, request_id = new_user(START), uuid.uuid4().hex
    batch = meter(*_events(user, request_id, order))
    assert [r["status"] for r in batch] == expected_statuses(order)
    assert_billed_by_what_arrived(user, request_id, order)


def test_ten_settles_of_one_request_without_a_hold_bill_once() -> None:
    user = new_user(1000)
    request_id = uuid.uuid4().hex
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(
            pool.map(lambda _: meter(event("settle", user, request_id, tokens=120))[0], range(10))
        )
    assert sorted(r["status"] for r in results) == ["duplicate"] * 9 + ["settled"]
    assert {r["balance"] for r in results} == {880}
    found = assert_consistent(user)
    assert int(found.quota) == 880 and int(found.request_count) == 1


# ---------------------------------------------------------------- the time budget


def test_a_deadline_leaves_the_rest_unmetered_and_the_retry_bills_it_once() -> None:
    user = new_user(100_000)
    batch = [event("charge", user, tokens=10) for _ in range(300)]
    client = db.connection().client
    deadline = time.monotonic() + 2

    def outlast_the_deadline(**_: Any) -> None:
        # The first transaction is slow: when it returns, the deadline has passed.
        while time.monotonic() < deadline:
            time.sleep(0.05)

    client.meta.events.register("after-call.dynamodb.TransactWriteItems", outlast_the_deadline)
    try:
        outcome = metering.meter(batch, settings=SETTINGS, deadline=deadline)
    finally:
        client.meta.events.unregister(
            "after-call.dynamodb.TransactWriteItems", outlast_the_deadline
        )
    assert outcome.timed_out and not outcome.errors
    done = [r for r in outcome.results if r is not None]
    # One transaction's worth was written, in input order; nothing after the deadline.
    assert len(done) == metering.MAX_RECORDS_PER_TRANSACTION
    assert all(r is not None for r in outcome.results[: len(done)])
    assert int(account(user).request_count) == len(done)
    retried = meter(*batch)
    assert [r["status"] for r in retried] == ["duplicate"] * len(done) + ["charged"] * (
        300 - len(done)
    )
    found = assert_consistent(user)
    assert int(found.request_count) == 300 and int(found.quota) == 100_000 - 3000


def test_a_transaction_the_slowest_so_far_says_would_outlast_the_deadline_waits() -> None:
    user = new_user(100_000)
    batch = [event("charge", user, tokens=10) for _ in range(300)]
    client = db.connection().client
    slow = 1.5  # far longer than the transaction itself takes here

    def slow_transaction(**_: Any) -> None:
        time.sleep(slow)  # every transaction takes at least this long

    # After the first transaction the deadline is still ahead, but less than one such
    # transaction ahead: the second would end after it, so it does not start.
    deadline = time.monotonic() + slow * 1.9
    client.meta.events.register("after-call.dynamodb.TransactWriteItems", slow_transaction)
    try:
        outcome = metering.meter(batch, settings=SETTINGS, deadline=deadline)
    finally:
        client.meta.events.unregister("after-call.dynamodb.TransactWriteItems", slow_transaction)
    assert outcome.timed_out and not outcome.errors
    done = [r for r in outcome.results if r is not None]
    assert len(done) == metering.MAX_RECORDS_PER_TRANSACTION
    assert int(account(user).request_count) == len(done)


def test_a_deadline_already_past_writes_nothing() -> None:
    user = new_user(1000)
    before = account(user)
    outcome = metering.meter(
        [event("charge", user), event("reserve", user)], settings=SETTINGS, deadline=0.0
    )
    assert outcome.timed_out and outcome.results == [None, None]
    assert int(account(user).version) == int(before.version)


# ---------------------------------------------------------------- unbilled usage


def unbilled_items() -> dict[str, unbilled.UnbilledUsage]:
    return {item.request_id: item for item in unbilled.UnbilledUsage.scan(consistent_read=True)}


def intake_results(*events: UsageEvent) -> list[dict[str, Any]]:
    raw = [
        {
            "action": e.action.value,
            "request_id": e.request_id,
            "user_id": e.user_id,
            "model": e.model,
            "prompt_tokens": e.prompt_tokens,
            "completion_tokens": e.completion_tokens,
        }
        for e in events
    ]
    outcome = intake.meter_raw(raw)
    assert all(result is not None for result in outcome.results), outcome.errors
    return [result for result in outcome.results if result is not None]


def test_usage_that_happened_but_cannot_be_billed_is_kept_once() -> None:
    user = new_user(100)
    nobody = "nobody-" + uuid.uuid4().hex
    settle = event("settle", user, tokens=40, model="later")
    charge = event("charge", nobody, tokens=30)
    not_usage = [
        event("reserve", user, model="later"),  # no usage happened yet
        event("charge", user, tokens=500),  # insufficient_quota: refused, not unbilled
        event("charge", user, tokens=5, model="unit"),  # billed
    ]
    before = set(unbilled_items())
    results = intake_results(settle, charge, *not_usage, settle)
    assert [(r["status"], r.get("error"), r.get("unbilled")) for r in results] == [
        ("rejected", "unknown_model", True),
        ("rejected", "account_not_found", True),
        ("rejected", "unknown_model", None),
        ("rejected", "insufficient_quota", None),
        ("charged", None, None),
        ("rejected", "unknown_model", True),  # the repeat keeps the one item
    ]
    items = unbilled_items()
    assert set(items) - before == {settle.request_id, charge.request_id}
    kept = items[settle.request_id]
    assert (kept.user_id, kept.action, kept.model, int(kept.prompt_tokens)) == (
        user, "settle", "later", 40,
    )  # fmt: skip
    assert (kept.error, kept.status, kept.open_shard) == (
        "unknown_model", "unbilled", unbilled.open_shard(settle.request_id),
    )  # fmt: skip
    assert items[charge.request_id].error == "account_not_found"
    # Out of the account's balance and history: only the charge of 5 moved anything.
    found = assert_consistent(user)
    assert int(found.quota) == 95 and int(found.request_count) == 1
    assert UsageRecord.count(settle.request_id, consistent_read=True) == 0


def test_unbilled_usage_is_listed_newest_first_over_the_shards() -> None:
    for item in unbilled.UnbilledUsage.scan(consistent_read=True):
        item.delete()
    user = new_user(0)
    kept = [event("settle", user, tokens=n + 1, model="later") for n in range(9)]
    for e in kept:
        intake_results(e)  # one at a time: distinct creation times
    assert len({unbilled.open_shard(e.request_id) for e in kept}) > 1
    wait_for_indexes()  # the list reads open_by_time, a GSI
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = unbilled.list_open(4, cursor)
        pages.append([item["request_id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [4, 4, 1]
    assert [rid for p in pages for rid in p] == [e.request_id for e in reversed(kept)]
    first = unbilled.list_open(4, None)["items"][0]
    assert first["status"] == "unbilled" and first["prompt_tokens"] == 9
    for bad in ("junk!", "eyJ4IjoxfQ", unbilled.list_open(4, None)["next_cursor"][:-4] + "AAAA"):
        with pytest.raises(InvalidRequest):
            unbilled.list_open(4, bad)


def test_remetering_bills_the_kept_usage_once_with_the_current_settings() -> None:
    user = new_user(100)
    settle = event("settle", user, tokens=40, model="later")
    intake_results(settle)
    # Still no price: refused, nothing billed, the item stays open and counts the attempt.
    with pytest.raises(unbilled.RemeterFailed) as refused:
        unbilled.remeter("admin-1", settle.request_id, settings=SETTINGS)
    assert "unknown_model" in refused.value.message
    item = unbilled.get(settle.request_id)
    assert (item.status, int(item.attempts), item.last_error) == ("unbilled", 1, "unknown_model")
    assert int(account(user).quota) == 100
    # Priced now: billed as the settle it was, once, however often it is re-metered.
    done = unbilled.render(unbilled.remeter("admin-1", settle.request_id, settings=FIXED))
    assert (done["status"], done["remetered_by"]) == ("remetered", "admin-1")
    assert done["result"] == {
        "request_id": settle.request_id, "status": "settled", "quota": 40, "balance": 60,
    }  # fmt: skip
    again = unbilled.render(unbilled.remeter("admin-2", settle.request_id, settings=FIXED))
    assert again == done
    # The event itself, delivered late, is now a duplicate of what the re-meter billed.
    (late,) = meter(settle, settings=FIXED)
    assert late["status"] == "duplicate" and late["quota"] == 40
    found = assert_consistent(user)
    assert (int(found.quota), int(found.used_quota), int(found.request_count)) == (60, 40, 1)
    wait_for_indexes()
    assert all(i["request_id"] != settle.request_id for i in unbilled.list_open(100, None)["items"])


def test_remetering_replaces_the_hold_the_request_still_has() -> None:
    user = new_user(1000)
    request_id = uuid.uuid4().hex
    # The gateway reserved with one model and settled with another, which has no price.
    intake_results(event("reserve", user, request_id, tokens=300))
    (kept,) = intake_results(event("settle", user, request_id, tokens=120, model="later"))
    assert kept["unbilled"] is True
    assert int(account(user).held_quota) == 300  # the hold is still there
    unbilled.remeter("admin-1", request_id, settings=FIXED)
    found = assert_consistent(user)
    assert (int(found.quota), int(found.held_quota), int(found.used_quota)) == (880, 0, 120)


def test_remetering_usage_of_an_account_made_later_may_go_below_zero() -> None:
    user = "late-" + uuid.uuid4().hex[:12]
    charge = event("charge", user, tokens=70)
    (kept,) = intake_results(charge)
    assert (kept["error"], kept["unbilled"]) == ("account_not_found", True)
    with pytest.raises(unbilled.RemeterFailed):
        unbilled.remeter("admin-1", charge.request_id, settings=SETTINGS)
    signup.create_account(user, None)
    done = unbilled.render(unbilled.remeter("admin-1", charge.request_id, settings=SETTINGS))
    # Metered as the usage it is: a settle, which may take the balance below zero.
    assert (done["result"]["status"], done["result"]["balance"]) == ("settled", -70)
    assert int(assert_consistent(user).quota) == -70
    with pytest.raises(NotFound):
        unbilled.remeter("admin-1", "no-such-request", settings=SETTINGS)
