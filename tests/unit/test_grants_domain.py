"""billing.grants: draw order, expiry, overdraft, the bound and its merges (pure, no I/O)."""

from __future__ import annotations

import pytest
from billing import grants as g
from billing.grants import OVERDRAFT, Grant
from hypothesis import given, settings
from hypothesis import strategies as st

NOW = 1_000_000
DAY = 86400


def grant(
    grant_id: str,
    remaining: int,
    source: str = "paid",
    priority: int = 50,
    expires_at: int | None = None,
    created_at: int = 0,
) -> Grant:
    return Grant(grant_id, source, remaining, remaining, priority, expires_at, created_at)


def held(*grants: Grant) -> dict[str, Grant]:
    return {item.grant_id: item for item in grants}


@pytest.mark.parametrize(
    ("grants", "order"),
    [
        # lower priority first, whatever the rest
        ([grant("a", 5, priority=60), grant("b", 5, priority=10)], ["b", "a"]),
        # then the nearest expiry, none last
        (
            [
                grant("a", 5),
                grant("b", 5, expires_at=NOW + 2 * DAY),
                grant("c", 5, expires_at=NOW + DAY),
            ],
            ["c", "b", "a"],
        ),
        # then non-paid before paid
        ([grant("a", 5, "paid"), grant("b", 5, "promo")], ["b", "a"]),
        # then oldest
        ([grant("a", 5, "code", created_at=9), grant("b", 5, "code", created_at=3)], ["b", "a"]),
    ],
)
def test_draw_order(grants: list[Grant], order: list[str]) -> None:
    deltas = g.draw(held(*grants), 5 * len(grants), NOW)
    assert list(deltas) == order
    assert sum(deltas.values()) == -5 * len(grants)


def test_a_draw_takes_in_order_and_splits_across_grants() -> None:
    grants = held(grant("promo", 30, "promo", expires_at=NOW + DAY), grant("paid", 100))
    assert g.draw(grants, 50, NOW) == {"promo": -30, "paid": -20}
    assert g.draw(grants, 10, NOW) == {"promo": -10}


def test_an_expired_grant_is_never_drawn_nor_spendable() -> None:
    grants = held(grant("promo", 30, "promo", expires_at=NOW), grant("paid", 100))
    assert g.draw(grants, 50, NOW) == {"paid": -50}
    assert g.spendable(grants, NOW) == 100
    assert g.spendable(grants, NOW - 1) == 130
    assert g.unspendable(grants, NOW) == 30


def test_what_the_grants_cannot_cover_goes_to_the_overdraft() -> None:
    grants = held(grant("paid", 10))
    deltas = g.draw(grants, 25, NOW)
    assert deltas == {"paid": -10, OVERDRAFT: -15}
    after = g.apply_deltas(grants, deltas, NOW)
    assert after[OVERDRAFT].remaining == -15 and after["paid"].remaining == 0
    assert g.total(after) == -15


def test_a_credit_repays_the_overdraft_first() -> None:
    grants = g.apply_deltas(held(), {OVERDRAFT: -40}, NOW)
    credited = g.credit(grants, grant("new", 100, "code"), NOW)
    assert credited.deltas == {OVERDRAFT: 40, "new": 60}
    assert OVERDRAFT not in credited.grants  # repaid in full: gone
    assert credited.grants["new"].amount == 100 and credited.grants["new"].remaining == 60
    small = g.credit(grants, grant("small", 15), NOW)
    assert small.deltas == {OVERDRAFT: 15}
    assert small.grants[OVERDRAFT].remaining == -25 and small.grants["small"].remaining == 0


def test_a_refund_takes_its_own_grant_first_then_draw_order_then_overdraft() -> None:
    grants = held(
        grant("promo", 20, "promo", expires_at=NOW + DAY),
        grant("order1", 30),
        grant("order2", 50, created_at=5),
    )
    assert g.reverse(grants, "order2", 60, NOW) == {"order2": -50, "promo": -10}
    assert g.reverse(grants, "order1", 120, NOW) == {
        "order1": -30,
        "promo": -20,
        "order2": -50,
        OVERDRAFT: -20,
    }
    # an own grant that is gone (or expired): draw order
    assert g.reverse(grants, "gone", 10, NOW) == {"promo": -10}


def test_expire_writes_off_the_remainder() -> None:
    grants = held(grant("promo", 20, "promo", expires_at=NOW), grant("paid", 5))
    after, delta = g.expire(grants, "promo")
    assert delta == -20 and list(after) == ["paid"]


def test_encoding_round_trips() -> None:
    grants = held(grant("a", 5, "promo", 10, NOW + DAY, 7), grant("b", 9)._replace(baseline=9))
    grants = g.apply_deltas(grants, {OVERDRAFT: -3}, NOW)
    encoded = g.encode(grants)
    assert "e" not in encoded["b"] and encoded["b"]["b"] == 9
    assert g.decode(encoded) == grants


def test_grant_ids_are_deterministic() -> None:
    assert g.grant_id_for("topup#o1") == g.grant_id_for("topup#o1")
    assert g.grant_id_for("topup#o1") != g.grant_id_for("topup#o2")
    assert len(g.grant_id_for("x")) == 13


def test_baseline_of_an_account_before_grants() -> None:
    (only,) = g.baseline("u1", 500, NOW).values()
    assert (only.source, only.remaining, only.baseline, only.expires_at) == ("paid", 500, 500, None)
    assert g.baseline("u1", -5, NOW)[OVERDRAFT].remaining == -5
    assert g.baseline("u1", 0, NOW) == {}


# ---------------------------------------------------------------- the bound


def full(limit: int = 4) -> dict[str, Grant]:
    return held(*(grant(f"g{i}", 10, "code", expires_at=NOW + (i + 1) * DAY) for i in range(limit)))


def test_under_the_bound_a_credit_adds_a_grant() -> None:
    credited = g.credit(full(3), grant("new", 5, "promo"), NOW, limit=4)
    assert credited.merged_into is None and "new" in credited.grants


def test_at_the_bound_exhausted_grants_are_dropped_first() -> None:
    grants = full()
    grants["g1"] = grants["g1"]._replace(remaining=0)
    credited = g.credit(grants, grant("new", 5, "promo"), NOW, limit=4)
    assert credited.dropped == ("g1",) and "new" in credited.grants
    assert credited.merged_into is None


def test_at_the_bound_same_source_priority_and_expiry_merge() -> None:
    credited = g.credit(full(), grant("new", 5, "code", expires_at=NOW + 2 * DAY), NOW, limit=4)
    assert credited.merged_into == "g1"
    assert credited.deltas == {"g1": 5}
    assert credited.grants["g1"].remaining == 15 and credited.grants["g1"].amount == 15
    assert "new" not in credited.grants


def test_at_the_bound_the_nearest_later_same_source_expiry_takes_it() -> None:
    grants = full()
    grants["p"] = grant("p", 10, "promo", expires_at=NOW + 10 * DAY)
    del grants["g3"]
    credited = g.credit(
        grants, grant("new", 5, "code", priority=20, expires_at=NOW + DAY + 5), NOW, limit=4
    )
    assert credited.merged_into == "g1"  # code, expiring after it (not g0, which is earlier)
    assert credited.grants["g1"].expires_at == NOW + 2 * DAY


def test_at_the_bound_a_later_grant_of_any_source_then_the_latest_takes_the_new_expiry() -> None:
    credited = g.credit(full(), grant("new", 5, "paid", expires_at=NOW + DAY + 1), NOW, limit=4)
    assert credited.merged_into == "g1"
    latest = g.credit(full(), grant("new", 5, "paid"), NOW, limit=4)
    assert latest.merged_into == "g3"
    assert latest.grants["g3"].expires_at is None  # never shortened: it now never expires


def test_never_merges_into_an_expired_grant() -> None:
    grants = full()
    credited = g.credit(
        grants, grant("new", 5, "code", expires_at=NOW + 9 * DAY), NOW + 4 * DAY, limit=4
    )
    assert credited.merged_into is None and len(credited.grants) == 5


# ---------------------------------------------------------------- invariants

grant_strategy = st.builds(
    lambda i, remaining, source, priority, expiry, created: grant(
        f"g{i}", remaining, source, priority, None if expiry is None else NOW + expiry, created
    ),
    st.integers(0, 30),
    st.integers(0, 1000),
    st.sampled_from(g.SOURCES),
    st.integers(0, 100),
    st.none() | st.integers(-DAY, 10 * DAY),
    st.integers(0, 100),
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(grant_strategy, max_size=20, unique_by=lambda item: item.grant_id),
    st.integers(0, 5000),
    st.none() | st.integers(0, 30),
)
def test_a_debit_moves_exactly_its_amount_and_never_overdraws_a_grant(
    grants: list[Grant], amount: int, own: int | None
) -> None:
    state = held(*grants)
    deltas = g.debit(state, amount, NOW, None if own is None else f"g{own}")
    assert sum(deltas.values()) == -amount
    after = g.apply_deltas(state, deltas, NOW)
    assert g.total(after) == g.total(state) - amount
    for grant_id, item in after.items():
        if grant_id != OVERDRAFT:
            assert item.remaining >= 0
            if item.expired(NOW):
                assert item.remaining == state[grant_id].remaining  # never drawn
    if amount <= g.spendable(state, NOW):
        assert OVERDRAFT not in deltas


@settings(max_examples=100, deadline=None)
@given(
    st.lists(grant_strategy, max_size=16, unique_by=lambda item: item.grant_id),
    st.integers(1, 5000),
    st.none() | st.integers(0, 3 * DAY),
    st.integers(-3000, 0),
)
def test_a_credit_adds_exactly_its_amount_within_the_bound(
    grants: list[Grant], amount: int, expiry: int | None, overdraft: int
) -> None:
    state = held(*grants)
    if overdraft:
        state = g.apply_deltas(state, {OVERDRAFT: overdraft}, NOW)
    new = grant("new", amount, "promo", expires_at=None if expiry is None else NOW + expiry)
    credited = g.credit(state, new, NOW, limit=16)
    assert sum(credited.deltas.values()) == amount
    assert g.total(credited.grants) == g.total(state) + amount
    live = [i for i in credited.grants.values() if i.grant_id != OVERDRAFT and not i.expired(NOW)]
    assert len(live) <= 16
    for item in credited.grants.values():
        if item.grant_id != OVERDRAFT:
            assert item.remaining >= 0
    target = credited.merged_into
    if target is not None:
        before = state[target].expires_at
        after = credited.grants[target].expires_at
        assert after is None or (before is not None and after >= before)  # never shortened
        # the new quota expires no earlier than asked
        assert after is None or (new.expires_at is not None and after >= new.expires_at)


def test_terms_are_validated() -> None:
    with pytest.raises(ValueError):
        g.Terms("gift")
    with pytest.raises(ValueError):
        g.Terms("promo", priority=101)


# ---------------------------------------------------------------- reconciliation


def checks(found: list[tuple[str, str, object, object]]) -> list[str]:
    return [check for check, *_ in found]


def test_problems_of_grants_that_agree_with_the_ledger_are_none() -> None:
    grants = held(grant("a", 70), grant("m", 500)._replace(baseline=500))
    entries = [
        g.Moved("adjustment#old", 500, None),  # before the migration: no grants
        g.Moved("adjustment#1", 100, {"a": 100}),
        g.Moved("usage#1", -30, {"a": -30}),
    ]
    assert g.problems(570, grants, entries, NOW) == []


def test_problems_find_every_disagreement() -> None:
    grants = held(grant("a", 80), grant("late", 5, "promo", expires_at=NOW - 2 * 3600))
    entries = [
        g.Moved("adjustment#1", 100, {"a": 100}),
        g.Moved("usage#1", -30, {"a": -20}),  # its grants do not sum to its delta
        g.Moved("usage#2", -5, None),  # moves quota without grants after grants began
        g.Moved("adjustment#2", 5, {"late": 5}),
    ]
    assert checks(g.problems(90, grants, entries, NOW)) == [
        "grants_sum",  # 85 held, quota 90
        "grants_entry",  # usage#1
        "grants_entry",  # usage#2
        "grants_baseline",  # -5 moved without grants, no baseline to account for it
        "grant_expiry",  # expired two hours ago, still holding 5
    ]


def test_a_grant_changed_behind_the_ledger_is_found() -> None:
    found = g.problems(999, held(grant("a", 999)), [g.Moved("adjustment#1", 100, {"a": 100})], NOW)
    assert [(c, e, a) for c, _, e, a in found] == [("grant_remaining", 100, 999)]
    # entries that carry grants on an account that has none
    unmigrated = g.problems(100, None, [g.Moved("adjustment#1", 100, {"a": 100})], NOW)
    assert checks(unmigrated) == ["grants"]
