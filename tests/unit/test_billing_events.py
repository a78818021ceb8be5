"""The billing events' pure parts: which ledger entries cause which events (crossing and
re-arming, table-driven), deterministic ids, and reading ledger stream records."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from billing.events import crossing, records
from billing.events.crossing import Arming, Entry, fold

T = 100  # the threshold of the table below


def entry(
    delta: int, after: int, n: int = 1, kind: str = "usage", ref: str = "r", user: str = "u"
) -> Entry:
    return Entry(
        user_id=user,
        entry_id=f"{kind}#{ref}#{n}",
        seq=f"{n:015d}.000",
        kind=kind,
        balance="quota",
        delta=delta,
        balance_after=after,
        ref=ref,
        created_at="2026-01-01T00:00:00.000000Z",
        sequence_number=str(n),
    )


def run(balances: list[int], threshold: int | None = T, arming: Arming | None = None) -> list[str]:
    """The event types caused by a balance moving through `balances` (first is the start)."""
    state = arming or Arming()
    entries = [
        entry(after - before, after, n)
        for n, (before, after) in enumerate(itertools.pairwise(balances), start=1)
    ]
    _, events = fold(state, threshold, entries)
    return [e["type"] for e in events]


@pytest.mark.parametrize(
    ("balances", "expected"),
    [
        ([150, 120], []),  # above to above
        ([150, 100], []),  # down to the threshold: not below it
        ([100, 99], ["balance.low"]),  # at the threshold to below: low
        ([150, 50], ["balance.low"]),
        ([150, 50, 40, 30], ["balance.low"]),  # once, however far it goes on
        ([150, 50, 100, 50], ["balance.low"]),  # back AT the threshold does not re-arm
        ([150, 50, 101, 50], ["balance.low", "balance.low"]),  # above it re-arms
        ([50, 40], []),  # already under (armed) but never crossed
        ([150, 0], ["balance.low", "balance.depleted"]),  # one entry, both causes
        ([150, -10], ["balance.low", "balance.depleted"]),
        ([50, 0, 0], ["balance.depleted"]),
        ([50, 0, 10, 0], ["balance.depleted", "balance.depleted"]),  # above zero re-arms it
        ([0, -5], []),  # from zero: already depleted (the entry that took it there counted)
    ],
)
def test_crossing_and_rearming(balances: list[int], expected: list[str]) -> None:
    assert run(balances) == expected


def test_without_a_threshold_only_depletion_counts() -> None:
    assert run([150, 50, 0], threshold=None) == ["balance.depleted"]


def test_a_disarmed_alert_stays_quiet_until_rearmed() -> None:
    state, events = fold(Arming(low_armed=False), T, [entry(-60, 90)])
    assert events == [] and state.low_armed is False
    state, _ = fold(state, T, [entry(60, 150, 2)])
    assert state.low_armed is True


def test_ids_are_derived_from_the_cause() -> None:
    one = fold(Arming(), T, [entry(-60, 90)])[1]
    again = fold(Arming(), T, [entry(-60, 90)])[1]
    other = fold(Arming(), T, [entry(-60, 90, 2)])[1]
    assert one[0]["id"] == again[0]["id"] != other[0]["id"]
    assert crossing.event_id("balance.low", "u", "x") != crossing.event_id("balance.low", "v", "x")


def test_topups_and_refunds_of_orders_are_events_and_other_reversals_are_not() -> None:
    entries = [
        entry(500, 600, 1, kind="topup", ref="ord_1"),
        entry(-200, 400, 2)._replace(kind="reversal", ref="ord_1", entry_id="reversal#ord_1#200"),
        entry(-10, 390, 3)._replace(
            kind="reversal", ref="ord_1", entry_id="referral_reward_reversal#ord_1"
        ),
    ]
    _, events = fold(Arming(), None, entries)
    assert [(e["type"], e["order_id"], e["delta"]) for e in events] == [
        ("topup.paid", "ord_1", 500),
        ("topup.refunded", "ord_1", -200),
    ]


def test_entries_of_aff_quota_cause_nothing() -> None:
    aff = entry(-60, -10)._replace(balance="aff_quota")
    assert fold(Arming(), T, [aff]) == (Arming(), [])


def _record(name: str = "INSERT", **image: Any) -> dict[str, Any]:
    item = {
        "user_id": {"S": "u"},
        "entry_id": {"S": "usage#1"},
        "seq": {"S": "000000000000001.000"},
        "kind": {"S": "usage"},
        "balance": {"S": "quota"},
        "delta": {"N": "-5"},
        "balance_after": {"N": "95"},
        "ref": {"S": "req"},
        "created_at": {"S": "2026-01-01T00:00:00.000000Z"},
        **image,
    }
    return {"eventName": name, "dynamodb": {"NewImage": item, "SequenceNumber": "42"}}


def test_stream_records_are_read_per_user_in_order() -> None:
    grouped = records.by_user(
        [
            _record(),
            _record(user_id={"S": "v"}),
            _record("MODIFY"),  # ledger entries are never modified: ignored
            _record(entry_id={"S": "usage#2"}, seq={"S": "000000000000002.000"}),
        ]
    )
    assert list(grouped) == ["u", "v"]
    assert [e.entry_id for e in grouped["u"]] == ["usage#1", "usage#2"]
    assert grouped["u"][0].delta == -5 and grouped["u"][0].sequence_number == "42"


@pytest.mark.parametrize(
    "bad",
    [
        {"delta": {"N": "1.5"}},
        {"balance_after": {"S": "95"}},
        {"seq": {"NULL": True}, "kind": {"NULL": True}, "delta": {"NULL": True}},
    ],
)
def test_an_unreadable_record_fails_loudly(bad: dict[str, Any]) -> None:
    with pytest.raises(records.UnreadableRecord):
        records.by_user([_record(**bad)])


def test_an_insert_without_its_image_fails_loudly() -> None:
    with pytest.raises(records.UnreadableRecord):
        records.entry_of({"eventName": "INSERT", "dynamodb": {"Keys": {}}})
