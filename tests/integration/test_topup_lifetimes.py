"""Order lifetimes on a stack of their own whose orders live 2 seconds
(limits.order_ttl_seconds, from a settings file given to LocalStack.start).

A pending order past its lifetime reads as expired at once and the scheduled sweep stores it
so; a payment that reaches us after that is never credited at the stale price by itself: the
order becomes `disputed` (failure_reason `paid_after_expiry`) for an admin to complete, which
credits once, however many admins press the button at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import Api, Tables, User, drain, pay
from tests.support.stack import LocalStack, wait_for

ROOT = Path(__file__).resolve().parents[2]
TTL_SECONDS = 2
UNIT = 500_000


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    document = json.loads((ROOT / "settings" / "local.json").read_text())
    document["limits"]["order_ttl_seconds"] = TTL_SECONDS
    path = tmp_path_factory.mktemp("settings") / "short-lived-orders.json"
    path.write_text(json.dumps(document))
    local = LocalStack("order-lifetimes")
    local.start(settings=path, env={"LOCAL_SCHEDULES": "0"})  # the sweep runs when we say
    try:
        yield local
    finally:
        local.stop()


def overdue(user: User, order: dict[str, Any]) -> dict[str, Any]:
    """Wait out the order's lifetime: it reads as expired (before any sweep)."""

    def expired() -> dict[str, Any] | None:
        current = user.order(order["order_id"])
        return current if current["status"] == "expired" else None

    shown = wait_for(expired, timeout=30, message="the order to outlive its lifetime")
    assert shown["failure_reason"] == "ttl"
    return shown


def test_a_late_payment_disputes_the_order_and_an_admin_credits_it_once(
    short_lived: LocalStack,
) -> None:
    api, tables = Api(short_lived), Tables(short_lived)
    user = api.new_user()
    order = user.checkout("stripe", 10)
    assert order["expires_at"] > order["created_at"]
    overdue(user, order)
    assert tables.order(order["order_id"])["status"] == "pending"  # not swept yet

    swept = short_lived.run_schedule("CreditPaymentFunction", "ExpireOrders")
    # (the schedule may be delivered twice, as EventBridge may: either run may expire it)
    assert swept.status_code == 200, swept.text
    stored = tables.order(order["order_id"])
    assert (stored["status"], stored["failure_reason"]) == ("expired", "ttl")
    assert "pending_shard" not in stored  # out of the sweep's index

    # The provider's page was still open: the user pays after the lifetime.
    assert pay(api, order["order_id"])["webhook_status"] == 200
    drain(short_lived)
    late = user.order(order["order_id"])
    assert (late["status"], late["failure_reason"]) == ("disputed", "paid_after_expiry")
    assert user.account()["quota"] == 0 and tables.ledger(user.user_id) == []

    admin = api.admin_token()
    path = f"/admin/topups/{order['order_id']}/complete"
    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(lambda _: api.call("POST", path, admin), range(6)))
    assert {reply.status_code for reply in replies} == {200}
    assert len({reply.json()["paid_at"] for reply in replies}) == 1
    assert user.account()["quota"] == 10 * UNIT
    assert [e["entry_id"] for e in tables.ledger(user.user_id)] == [f"topup#{order['order_id']}"]
    assert api.call("POST", path, admin).json()["status"] == "paid"  # again: unchanged


@pytest.mark.parametrize("method", ["waffo", "creem"])
def test_a_payment_after_the_lifetime_is_not_credited_even_before_the_sweep(
    short_lived: LocalStack, method: str
) -> None:
    api, tables = Api(short_lived), Tables(short_lived)
    user = api.new_user()
    order = user.checkout(method, 10)
    overdue(user, order)
    assert pay(api, order["order_id"])["webhook_status"] == 200
    drain(short_lived)
    stored = tables.order(order["order_id"])
    assert (stored["status"], stored["failure_reason"]) == ("disputed", "paid_after_expiry")
    assert user.account()["quota"] == 0 and tables.ledger(user.user_id) == []


def test_the_sweep_leaves_paid_orders_alone_and_expires_each_order_once(
    short_lived: LocalStack,
) -> None:
    api, tables = Api(short_lived), Tables(short_lived)
    user = api.new_user()
    forgotten = user.checkout("stripe", 1)
    refused = user.checkout("stripe", 2)
    assert pay(api, refused["order_id"], "failed")["webhook_status"] == 200
    drain(short_lived)
    time.sleep(TTL_SECONDS + 0.5)  # both outlive their lifetime
    short_lived.run_schedule("CreditPaymentFunction", "ExpireOrders")
    assert tables.order(forgotten["order_id"])["status"] == "expired"
    assert tables.order(refused["order_id"])["status"] == "failed"
    expired_at = tables.order(forgotten["order_id"])["updated_at"]
    again = short_lived.run_schedule("CreditPaymentFunction", "ExpireOrders").json()
    # nothing expires twice; an index entry that still lags may be cleared again (no effect)
    assert again["expired"] == 0, again
    assert tables.order(forgotten["order_id"])["updated_at"] == expired_at
    assert tables.order(refused["order_id"])["status"] == "failed"
