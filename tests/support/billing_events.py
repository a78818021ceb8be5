"""Helpers for billing events and auto top-up on the local stack: funding and spending an
account, and reading what reached the billing bus (GET /_local/events), bounded polling."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.support.stack import LocalStack, wait_for

PRICE = 20_000  # one dall-e-3 request: model_price 0.04 x quota_per_unit 500000
BUS_SUFFIX = "-billing"


def admin_token(stack: LocalStack) -> str:
    return stack.token("events-admin", admin=True)


def fund(stack: LocalStack, user: str, delta: int) -> dict[str, Any]:
    response = stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=admin_token(stack),
        json={"delta": delta, "reason": "test funding"},
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def charge(stack: LocalStack, user: str) -> dict[str, Any]:
    result: dict[str, Any] = stack.invoke(
        "MeterUsageFunction",
        {
            "action": "charge",
            "request_id": f"req-{uuid.uuid4().hex}",
            "user_id": user,
            "model": "dall-e-3",
            "prompt_tokens": 0,
            "completion_tokens": 0,
        },
    )
    return result


def charge_concurrently(stack: LocalStack, user: str, count: int) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=min(count, 10)) as pool:
        results = list(pool.map(lambda _: charge(stack, user), range(count)))
    assert all(r["status"] == "charged" for r in results), results
    return results


def user_events(stack: LocalStack, user: str, type: str | None = None) -> list[dict[str, Any]]:
    """The details of the billing events of `user` on the billing bus, oldest first."""
    found = [
        item["event"]["detail"]
        for item in stack.events(type=type, source="quota.billing", limit=1000)
        if item["bus"].endswith(BUS_SUFFIX) and item["event"]["detail"].get("user_id") == user
    ]
    return list(reversed(found))


def wait_events(
    stack: LocalStack, user: str, type: str, count: int, timeout: float = 30.0
) -> list[dict[str, Any]]:
    return wait_for(
        lambda: found if len(found := user_events(stack, user, type)) >= count else None,
        timeout=timeout,
        message=f"{count} {type} events of {user}",
    )


def settle_stream(stack: LocalStack, seconds: float = 2.0) -> None:
    """Give the ledger stream time to deliver what is still in flight, so that "exactly one"
    is checked after any extra event could have come (a bounded wait, not a timing claim)."""
    time.sleep(seconds)
