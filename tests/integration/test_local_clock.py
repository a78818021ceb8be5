"""The billing clock (API.md, Local stack: POST /_local/clock): it moves forward for every
function, never back, runs the schedules that came due, and leaves tokens on real time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.test_metering import (
    FUNCTION,
    account_item,
    funded_user,
    new_request,
    usage_event,
    usage_record,
)
from tests.support.stack import LocalStack, wait_for


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _offset(stack: LocalStack) -> float:
    body: dict[str, Any] = stack.http.get(f"{stack.base_url}/_local/clock", timeout=30).json()
    return float(body["offset_seconds"])


def test_the_clock_reads_real_time_plus_what_it_was_moved(stack: LocalStack) -> None:
    before = _offset(stack)
    now = _parse(stack.clock_now())
    expected = datetime.now(UTC) + timedelta(seconds=before)
    assert abs((now - expected).total_seconds()) < 60
    moved = stack.advance_clock(3600)
    assert moved["offset_seconds"] == before + 3600
    assert _parse(moved["now"]) - now >= timedelta(seconds=3600)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"advance_seconds": 0},
        {"advance_seconds": -60},
        {"advance_seconds": 1.5},
        {"advance_seconds": "60"},
        {"advance_seconds": True},
        {"advance_seconds": 10**9},
        {"advance_seconds": 60, "to": "2030-01-01"},
        [60],
    ],
)
def test_a_bad_move_is_400_and_the_clock_stays(stack: LocalStack, body: Any) -> None:
    before = _offset(stack)
    response = stack.http.post(f"{stack.base_url}/_local/clock", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert _offset(stack) == before


def test_functions_see_the_moved_clock_and_due_schedules_run(stack: LocalStack) -> None:
    """A hold lives limits.hold_ttl_seconds (900 locally). Moving the clock past it makes the
    scheduled sweeper (MeterUsageFunction's rate(1 minute)) run at once, and the function
    finds the hold expired by the billing clock, long before it would in real time."""
    user = funded_user(stack, 1_000_000)
    request_id = new_request()
    reserved = stack.invoke(FUNCTION, usage_event(user, "reserve", request_id=request_id))
    assert reserved["status"] == "reserved", reserved
    held = int(account_item(stack, user)["held_quota"])
    assert held == reserved["quota"] > 0
    assert _parse(reserved["expires_at"]) > datetime.now(UTC)

    moved = stack.advance_clock(901)
    assert {"schedule": "MeterUsageFunction/ReleaseExpiredHolds", "function_error": False} in (
        moved["ran"]
    )

    # The sweeper reads the open-holds index, eventually consistent: a hold written a moment
    # before may be missed by that run and released by the next (each minute in AWS).
    def released() -> dict[str, Any] | None:
        found = usage_record(stack, request_id)
        if found is not None and found["status"] == "expired":
            return found
        stack.run_schedule("MeterUsageFunction", "ReleaseExpiredHolds").raise_for_status()
        return None

    record = wait_for(released, timeout=30, interval=1.0, message="the hold released")
    assert record["status"] == "expired"
    assert int(account_item(stack, user)["held_quota"]) == 0
    # What the functions write carries billing time too.
    assert _parse(str(record["updated_at"])) > datetime.now(UTC) + timedelta(seconds=800)


def test_tokens_keep_real_time_when_the_clock_moves(stack: LocalStack) -> None:
    user = funded_user(stack, 0)
    token = stack.token(user)
    stack.advance_clock(7200)  # beyond the dev token's one-hour lifetime in billing time
    response = stack.request("GET", "/account", token=token)
    assert response.status_code == 200, response.text
