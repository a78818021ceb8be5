"""The ledger: every change is one transaction; a cause applies once; ledger sums to balance."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from billing import ledger
from billing.errors import AccountNotFound
from billing.ledger import Change, EntryKind
from billing.models import Account, LedgerEntry
from billing.referral import signup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.embedded_tables import embedded_tables


@pytest.fixture(scope="module", autouse=True)
def tables() -> Iterator[None]:
    with embedded_tables():
        yield


def new_user() -> str:
    user_id = f"u-{uuid.uuid4().hex[:12]}"
    signup.create_account(user_id, None)
    return user_id


def sums(user_id: str) -> dict[str, int]:
    totals = {"quota": 0, "aff_quota": 0}
    for entry in LedgerEntry.query(user_id, consistent_read=True):
        totals[entry.balance] += int(entry.delta)
    return totals


def assert_ledger_matches(user_id: str) -> Account:
    account = Account.get(user_id, consistent_read=True)
    assert sums(user_id) == {"quota": int(account.quota), "aff_quota": int(account.aff_quota)}
    return account


def test_mixed_changes_sum_to_the_balance() -> None:
    user = new_user()
    ledger.apply([Change(user, "topup#o1", EntryKind.TOPUP, 5000)])
    ledger.apply(
        [
            Change(
                user,
                "usage#r1",
                EntryKind.USAGE,
                -1200,
                counters={"used_quota": 1200, "request_count": 1},
            )
        ]
    )
    ledger.apply(
        [Change(user, "referral_reward#o9", EntryKind.REFERRAL_REWARD, 300, balance="aff_quota")]
    )
    ledger.apply(
        [
            Change(
                user,
                "referral_transfer#t1#aff",
                EntryKind.REFERRAL_TRANSFER,
                -300,
                balance="aff_quota",
            ),
            Change(user, "referral_transfer#t1", EntryKind.REFERRAL_TRANSFER, 300),
        ]
    )
    ledger.apply([Change(user, "reversal#o1", EntryKind.REVERSAL, -5000, may_go_negative=True)])
    account = assert_ledger_matches(user)
    assert int(account.quota) == 5000 - 1200 + 300 - 5000
    assert int(account.used_quota) == 1200 and int(account.request_count) == 1
    entries = {entry.entry_id: entry for entry in LedgerEntry.query(user, consistent_read=True)}
    assert int(entries["usage#r1"].balance_after) == 3800
    assert int(entries["reversal#o1"].balance_after) == -900


def test_a_cause_applied_twice_changes_nothing() -> None:
    user = new_user()
    ledger.apply([Change(user, "topup#same", EntryKind.TOPUP, 700)])
    before = Account.get(user, consistent_read=True)
    with pytest.raises(ledger.DuplicateEntry) as duplicate:
        ledger.apply([Change(user, "topup#same", EntryKind.TOPUP, 700)])
    assert duplicate.value.entry_id == "topup#same"
    after = assert_ledger_matches(user)
    assert int(after.quota) == 700 and int(after.version) == int(before.version)


def test_no_debit_below_zero_and_nothing_written() -> None:
    user = new_user()
    ledger.apply([Change(user, "topup#a", EntryKind.TOPUP, 100)])
    with pytest.raises(ledger.InsufficientBalance):
        ledger.apply([Change(user, "usage#big", EntryKind.USAGE, -101)])
    with pytest.raises(ledger.InsufficientBalance):
        ledger.apply([Change(user, "x#aff", EntryKind.REFERRAL_TRANSFER, -1, balance="aff_quota")])
    # a hold counts against the available balance
    ledger.apply([Change(user, None, counters={"held_quota": 60})])
    with pytest.raises(ledger.InsufficientBalance):
        ledger.apply([Change(user, "usage#41", EntryKind.USAGE, -41)])
    account = assert_ledger_matches(user)
    assert int(account.quota) == 100 and int(account.held_quota) == 60
    assert {entry.entry_id for entry in LedgerEntry.query(user, consistent_read=True)} == {
        "topup#a"
    }


def test_unknown_account_is_refused() -> None:
    with pytest.raises(AccountNotFound):
        ledger.apply([Change("nobody-" + uuid.uuid4().hex, "topup#x", EntryKind.TOPUP, 1)])


def test_an_extra_item_failing_cancels_everything() -> None:
    user = new_user()
    blocker = Account.get(user, consistent_read=True)
    failing = ledger.TxOp(
        label="other-account-must-exist",
        op="condition_check",
        model=Account,
        hash_key="missing-" + uuid.uuid4().hex,
        condition=Account.user_id.exists(),
    )
    with pytest.raises(ledger.ConditionFailed) as failed:
        ledger.apply([Change(user, "topup#never", EntryKind.TOPUP, 10)], extra=[failing])
    assert failed.value.label == "other-account-must-exist"
    assert int(Account.get(user, consistent_read=True).quota) == int(blocker.quota) == 0
    assert list(LedgerEntry.query(user, consistent_read=True)) == []


def test_concurrent_debits_never_overdraw() -> None:
    user = new_user()
    ledger.apply([Change(user, "topup#c", EntryKind.TOPUP, 1000)])

    def debit(index: int) -> bool:
        try:
            ledger.apply([Change(user, f"usage#{index}", EntryKind.USAGE, -100)])
        except ledger.InsufficientBalance:
            return False
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(debit, range(25)))
    assert results.count(True) == 10
    account = assert_ledger_matches(user)
    assert int(account.quota) == 0


def test_concurrent_duplicates_apply_once() -> None:
    user = new_user()

    def credit(_: int) -> bool:
        try:
            ledger.apply([Change(user, "topup#race", EntryKind.TOPUP, 250)])
        except ledger.DuplicateEntry:
            return False
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(credit, range(16)))
    assert results.count(True) == 1
    assert int(assert_ledger_matches(user).quota) == 250


operations = st.lists(
    st.tuples(
        st.sampled_from(["credit", "debit", "reward", "transfer", "reversal", "repeat"]),
        st.integers(min_value=1, max_value=10_000),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations)
def test_any_sequence_keeps_ledger_equal_to_balance(steps: list[tuple[str, int]]) -> None:
    user = new_user()
    applied: list[str] = []
    for index, (kind, amount) in enumerate(steps):
        cause = f"{kind}#{index}"
        batch: list[Change]
        if kind == "credit":
            batch = [Change(user, cause, EntryKind.TOPUP, amount)]
        elif kind == "debit":
            batch = [Change(user, cause, EntryKind.USAGE, -amount)]
        elif kind == "reward":
            batch = [Change(user, cause, EntryKind.REFERRAL_REWARD, amount, balance="aff_quota")]
        elif kind == "transfer":
            batch = [
                Change(
                    user, cause + "#aff", EntryKind.REFERRAL_TRANSFER, -amount, balance="aff_quota"
                ),
                Change(user, cause, EntryKind.REFERRAL_TRANSFER, amount),
            ]
        elif kind == "reversal":
            batch = [Change(user, cause, EntryKind.REVERSAL, -amount, may_go_negative=True)]
        else:
            if not applied:
                continue
            batch = [Change(user, applied[-1], EntryKind.ADJUSTMENT, amount)]
        try:
            ledger.apply(batch)
            applied.append(cause)
        except (ledger.InsufficientBalance, ledger.DuplicateEntry):
            pass
        account = assert_ledger_matches(user)
        assert int(account.aff_quota) >= 0


MALFORMED: list[tuple[str, Callable[[str], Change], type[Exception]]] = [
    ("balance move without an entry", lambda user: Change(user, None, None, 500), ValueError),
    ("entry without a kind", lambda user: Change(user, "topup#x", None, 500), ValueError),
    ("bool delta", lambda user: Change(user, "topup#y", EntryKind.TOPUP, True), TypeError),
    ("float delta", lambda user: Change(user, "topup#z", EntryKind.TOPUP, 1.5), TypeError),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(
    ("bad", "error"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_a_malformed_change_is_refused_before_anything_is_written(
    bad: Callable[[str], Change], error: type[Exception]
) -> None:
    user = new_user()
    good = Change(user, "topup#ok", EntryKind.TOPUP, 100)
    before = Account.get(user, consistent_read=True)
    with pytest.raises(error):
        ledger.apply([good, bad(user)])  # the well-formed change goes nowhere either
    after = assert_ledger_matches(user)
    assert (int(after.quota), int(after.version)) == (int(before.quota), int(before.version))
    written = {entry.entry_id for entry in LedgerEntry.query(user, consistent_read=True)}
    assert not written & {"topup#ok", "topup#x", "topup#y", "topup#z"}
