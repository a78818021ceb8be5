"""Any delivery order holds (API.md, issue 21): reserve, settle and release of one request_id,
in every order and with repeats, through the Invoke API (one event per call, and one batch)
and through the usage queue (a stack of its own with several pollers at once, as Lambda runs
several batches of a standard queue); and concurrently.

What a request_id is billed depends only on which actions arrived: the settle's price when a
settle came (exactly once), nothing otherwise; nothing stays held once a settle or release
came. Prices: gpt-4o, 800 prompt tokens hold 1000; 96 settle at 120.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.metering import (
    delivery_orders,
    expected_statuses,
    final_status,
    funded_user,
    get_account,
    invoke,
    new_request,
    queue_depth,
    send,
    statuses,
    take_dead_letters,
    usage_event,
    usage_record,
)
from tests.support.reconcile import assert_reconciled
from tests.support.stack import LocalStack, wait_for

START = 5000
HOLD, PRICE = 1000, 120
TOKENS = {"reserve": 800, "settle": 96, "release": 0}


def events_of(user: str, request_id: str, order: Sequence[str]) -> list[dict[str, Any]]:
    return [usage_event(user, a, request_id, prompt_tokens=TOKENS[a]) for a in order]


def expected_account(order: Sequence[str]) -> tuple[int, int, int, int]:
    """(quota, held_quota, used_quota, request_count) once everything has arrived."""
    return {
        "settled": (START - PRICE, 0, PRICE, 1),
        "released": (START, 0, 0, 0),
        "reserved": (START, HOLD, 0, 0),
    }[final_status(order)]


def assert_billed_by_what_arrived(
    stack: LocalStack, user: str, request_id: str, order: Sequence[str]
) -> None:
    account = get_account(stack, user)
    found = (
        account["quota"],
        account["held_quota"],
        account["used_quota"],
        account["request_count"],
    )
    assert found == expected_account(order), order
    record = usage_record(stack, request_id)
    assert record is not None and record["status"] == final_status(order), (order, record)


ORDERS = delivery_orders()
# Through the Invoke API: every order of the three actions, and each again with its first
# action repeated last (tests/unit/test_metering_domain.py runs all of ORDERS on the domain).
PERMUTATIONS = [order for order in ORDERS if len(order) == 3 and len(set(order)) == 3]
INVOKE_ORDERS = PERMUTATIONS + [(*order, order[0]) for order in PERMUTATIONS]


@pytest.mark.parametrize("order", INVOKE_ORDERS, ids="-".join)
def test_every_order_through_the_invoke_api(stack: LocalStack, order: tuple[str, ...]) -> None:
    user, request_id = funded_user(stack, START), new_request()
    results = [invoke(stack, event) for event in events_of(user, request_id, order)]
    assert statuses(results) == expected_statuses(order)
    settled = next(r for r in results if r["status"] == "settled")
    assert (settled["quota"], settled["balance"]) == (PRICE, START - PRICE)
    assert_billed_by_what_arrived(stack, user, request_id, order)
    # The same order within one batch.
    user, request_id = funded_user(stack, START), new_request()
    batch = invoke(stack, {"events": events_of(user, request_id, order)})["results"]
    assert statuses(batch) == expected_statuses(order)
    assert_billed_by_what_arrived(stack, user, request_id, order)


def test_a_settle_first_takes_the_balance_below_zero_and_the_late_reserve_holds_nothing(
    stack: LocalStack,
) -> None:
    user, request_id = funded_user(stack, 50), new_request()
    settle, reserve, release = events_of(user, request_id, ("settle", "reserve", "release"))
    settled = invoke(stack, settle)
    assert (settled["status"], settled["quota"], settled["balance"]) == ("settled", 120, -70)
    for late in (invoke(stack, reserve), invoke(stack, release)):
        assert (late["status"], late["first_status"], late["balance"]) == (
            "duplicate", "settled", -70,
        )  # fmt: skip
    account = get_account(stack, user)
    assert (account["quota"], account["held_quota"], account["request_count"]) == (-70, 0, 1)


def test_concurrent_reserves_settles_and_releases_bill_each_request_once(
    stack: LocalStack,
) -> None:
    user = funded_user(stack, START * 4)
    requests = [new_request() for _ in range(12)]
    # Every request gets its three actions and a repeat of each, all at once, shuffled.
    events = [
        event
        for request_id in requests
        for event in events_of(user, request_id, ("reserve", "settle", "release") * 2)
    ]
    random.Random(21).shuffle(events)
    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(lambda e: invoke(stack, e), events))
    by_request: dict[str, list[str]] = {}
    for event, result in zip(events, results, strict=True):
        by_request.setdefault(event["request_id"], []).append(result["status"])
    for request_id, found in by_request.items():
        assert found.count("settled") == 1, (request_id, found)
        assert set(found) <= {"reserved", "settled", "released", "duplicate"}, found
        record = usage_record(stack, request_id)
        assert record is not None and record["status"] == "settled"
        assert (record["quota"], record["hold_quota"]) in {("120", "0"), ("120", "1000")}
    account = get_account(stack, user)
    assert account["held_quota"] == 0 and account["request_count"] == 12
    assert account["quota"] == START * 4 - 12 * PRICE and account["used_quota"] == 12 * PRICE


def test_ten_parallel_settles_without_a_hold_bill_once(stack: LocalStack) -> None:
    user, request_id = funded_user(stack, START), new_request()
    (settle,) = events_of(user, request_id, ("settle",))
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: invoke(stack, settle), range(10)))
    assert sorted(statuses(results)) == ["duplicate"] * 9 + ["settled"]
    assert {r["balance"] for r in results} == {START - PRICE}
    account = get_account(stack, user)
    assert (account["quota"], account["request_count"]) == (START - PRICE, 1)


# ---------------------------------------------------------------- through the usage queue


@pytest.fixture(scope="module")
def concurrent_pollers() -> Iterator[LocalStack]:
    """A stack of its own whose usage queue is polled by four batches at once."""
    local = LocalStack("metering-order")
    local.start(env={"LOCAL_POLLER_THREADS": "4", "LOCAL_SCHEDULES": "0"})
    try:
        yield local
        assert_reconciled(local)
    finally:
        local.stop()


def test_every_order_through_the_usage_queue_bills_once(concurrent_pollers: LocalStack) -> None:
    stack = concurrent_pollers
    cases = []
    messages: list[list[Any]] = []
    for order in ORDERS:
        user, request_id = funded_user(stack, START), new_request()
        cases.append((user, request_id, order))
        # Single events and one-event batches alike.
        events = events_of(user, request_id, order)
        messages.append([{"events": [e]} if i % 2 else e for i, e in enumerate(events)])
    # Interleaved: the first action of every case, then the second, ... so the queue's
    # batches mix cases and the pollers race each other on the same requests.
    interleaved: list[Any] = []
    for step in range(max(len(case) for case in messages)):
        interleaved += [case[step] for case in messages if step < len(case)]
    send(stack, interleaved)

    def settled() -> bool:
        if queue_depth(stack, "UsageQueue"):
            return False
        for _, request_id, order in cases:
            record = usage_record(stack, request_id)
            if record is None or record["status"] != final_status(order):
                return False
        return True

    wait_for(settled, timeout=180, interval=1, message="every order to be metered")
    for user, request_id, order in cases:
        assert_billed_by_what_arrived(stack, user, request_id, order)
        assert take_dead_letters(stack, user) == []
