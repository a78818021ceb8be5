"""Concurrency and faults on the local stack: nothing is lost and nothing is doubled.

Many threads drive top-ups, redemptions and metering while the embedded AWS injects faults:
throttling and InternalServerError on the N-th TransactWriteItems, SendMessage failing for
the webhook, a transaction that commits but whose answer is lost (the credit handler
crashing after its transaction), and the credit poller dying mid-batch. Providers and meters
retry as they do in life (a 5xx or a function error means "send again"). After the faults
are cleared and the queues drained, each test proves: every order a provider was told 200
for is credited exactly once, balances equal the sum of what was credited and charged, every
ledger sums to its balance, and the reconciliation of every account involved is clean.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.api import (
    UNIT,
    Api,
    Tables,
    User,
    drain,
    pay,
    queue_depth,
    replay_notification,
)
from tests.support.reconcile import check_stack_account
from tests.support.stack import LocalStack

THREADS = 8


@pytest.fixture(autouse=True)
def no_faults_left(stack: LocalStack) -> Iterator[None]:
    stack.clear_faults()
    given_up = queue_depth(stack, "CreditDLQ")
    yield
    stack.clear_faults()
    # Retries stayed within maxReceiveCount: no payment event was given up to the DLQ.
    assert queue_depth(stack, "CreditDLQ") == given_up


@pytest.fixture
def api(stack: LocalStack) -> Api:
    return Api(stack)


def injected(stack: LocalStack, key: str) -> int:
    return int(stack.stats()["injected_faults"].get(key, 0))


def fault(stack: LocalStack, **spec: Any) -> None:
    stack.fault(**spec)


def retry_5xx(send: Callable[[], int], attempts: int = 30) -> int:
    """Deliver as a provider does: a 5xx means "not received", so send again."""
    status = 0
    for _ in range(attempts):
        status = send()
        if status < 500:
            return status
    return status


def assert_consistent(stack: LocalStack, users: list[User]) -> None:
    """Ledger = balance for every account, and the reconciliation of each is clean."""
    tables = Tables(stack)
    for user in users:
        account = tables.account(user.user_id)
        assert account is not None
        assert tables.sums(user.user_id) == {
            "quota": account["quota"],
            "aff_quota": account["aff_quota"],
        }
        differences = check_stack_account(stack, user.user_id)
        assert not differences, [str(d) for d in differences]


def assert_credited_once(stack: LocalStack, orders: list[tuple[User, dict[str, Any]]]) -> None:
    tables = Tables(stack)
    expected: dict[str, int] = {}
    for user, order in orders:
        stored = tables.order(order["order_id"])
        assert stored["status"] == "paid", stored
        topups = [
            e for e in tables.ledger(user.user_id) if e["entry_id"] == f"topup#{order['order_id']}"
        ]
        assert [e["delta"] for e in topups] == [order["quota"]]
        expected[user.user_id] = expected.get(user.user_id, 0) + order["quota"]
    for user, _ in orders:
        account = tables.account(user.user_id)
        assert account is not None and account["quota"] == expected[user.user_id]


def place_orders(
    api: Api, users: list[User], per_user: int, methods: tuple[str, ...]
) -> list[tuple[User, dict[str, Any]]]:
    jobs = [
        (user, methods[(i + j) % len(methods)])
        for i, user in enumerate(users)
        for j in range(per_user)
    ]
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(lambda job: (job[0], job[0].checkout(job[1], 3)), jobs))


# ---------------------------------------------------------------- the crediting transaction


def test_throttled_and_failing_credit_transactions_are_retried_and_credit_once(
    stack: LocalStack,
    api: Api,
) -> None:
    users = [api.new_user(prefix="fault") for _ in range(6)]
    orders = place_orders(api, users, 4, ("stripe", "waffo"))
    drain(stack)
    before = injected(stack, "dynamodb.TransactWriteItems")
    orders_table = stack.table_name("OrdersTable")
    # Only the crediting transaction names the orders table. Each fault outlasts the SDK's
    # own retries (4 attempts), so a whole credit attempt fails and SQS redelivers it.
    fault(
        stack,
        service="dynamodb",
        operation="TransactWriteItems",
        contains=orders_table,
        error_code="ProvisionedThroughputExceededException",
        after=2,
        count=4,
    )
    fault(
        stack,
        service="dynamodb",
        operation="TransactWriteItems",
        contains=orders_table,
        error_code="InternalServerError",
        after=10,
        count=4,
    )

    def pay_and_repeat(job: tuple[User, dict[str, Any]]) -> None:
        result = pay(api, job[1]["order_id"])
        assert result["webhook_status"] == 200, result
        if job[1]["method"] == "stripe":  # and the same event again, concurrently
            again = api.sandbox("POST", f"/stripe/redeliver/{result['event_id']}")
            assert again.json()["webhook_status"] == 200

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(pay_and_repeat, orders))
    drain(stack)
    assert injected(stack, "dynamodb.TransactWriteItems") - before == 8  # the faults bit
    stack.clear_faults()
    assert_credited_once(stack, orders)
    assert_consistent(stack, users)


def test_a_credit_committed_but_unanswered_is_not_credited_again(
    stack: LocalStack,
    api: Api,
) -> None:
    """The transaction takes effect, then its caller sees an error: retried inside the SDK
    (InternalServerError), or the handler fails and SQS redelivers (a 400 the SDK does not
    retry, as when the function crashes after its transaction)."""
    users = [api.new_user(prefix="fault") for _ in range(4)]
    orders = place_orders(api, users, 3, ("stripe", "epay", "creem", "waffo"))
    orders_table = stack.table_name("OrdersTable")
    before = injected(stack, "dynamodb.TransactWriteItems")
    fault(
        stack,
        service="dynamodb",
        operation="TransactWriteItems",
        contains=orders_table,
        error_code="InternalServerError",
        after_commit=True,
        count=3,
    )
    fault(
        stack,
        service="dynamodb",
        operation="TransactWriteItems",
        contains=orders_table,
        error_code="ValidationException",
        after_commit=True,
        after=3,
        count=2,
    )
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda job: pay(api, job[1]["order_id"]), orders))
    assert {r["webhook_status"] for r in results} == {200}
    drain(stack)
    assert injected(stack, "dynamodb.TransactWriteItems") - before == 5
    assert_credited_once(stack, orders)
    assert_consistent(stack, users)


def test_the_credit_poller_dying_mid_batch_redelivers_and_credits_once(
    stack: LocalStack,
    api: Api,
) -> None:
    users = [api.new_user(prefix="fault") for _ in range(5)]
    orders = place_orders(api, users, 3, ("stripe", "waffo", "creem"))
    pollers = stack.stats()["pollers"]["CreditPaymentFunction/CreditQueueEvents"]
    fault(stack, poller="CreditPaymentFunction", die_after_invoke=3)
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda job: pay(api, job[1]["order_id"]), orders))
    assert {r["webhook_status"] for r in results} == {200}
    drain(stack)
    after = stack.stats()["pollers"]["CreditPaymentFunction/CreditQueueEvents"]
    # The dead batches came back: more messages were handed over than were queued.
    assert after["messages"] - pollers["messages"] > len(orders)
    assert_credited_once(stack, orders)
    assert_consistent(stack, users)


# ---------------------------------------------------------------- the webhook's queue


def test_a_webhook_that_cannot_be_queued_is_refused_and_credited_once_when_resent(
    stack: LocalStack,
    api: Api,
) -> None:
    users = [api.new_user(prefix="fault") for _ in range(4)]
    orders = place_orders(api, users, 2, ("stripe", "epay", "creem", "waffo"))
    fault(stack, service="sqs", operation="SendMessage", error_code="InternalServerError", count=-1)
    with ThreadPoolExecutor(THREADS) as pool:
        refused = list(pool.map(lambda job: pay(api, job[1]["order_id"]), orders))
    # Every delivery got a 5xx (or the provider's own "not received"), nothing was queued,
    # and nothing was credited.
    for result in refused:
        assert result["webhook_status"] >= 500, result
    assert queue_depth(stack, "CreditQueue") == 0
    tables = Tables(stack)
    for user, order in orders:
        assert tables.order(order["order_id"])["status"] == "pending"
        assert tables.ledger(user.user_id) == []
    stack.clear_faults()

    def resend(job: tuple[tuple[User, dict[str, Any]], dict[str, Any]]) -> None:
        (_, order), result = job
        notifications = []
        if order["method"] != "stripe":
            listed = api.sandbox("GET", f"/{order['method']}/notifications/{order['order_id']}")
            notifications = listed.json()["items"]
            assert len(notifications) == 1, notifications

        def send() -> int:
            if order["method"] == "stripe":
                path = f"/stripe/redeliver/{result['event_id']}"
                return int(api.sandbox("POST", path).json()["webhook_status"])
            return replay_notification(api, notifications[0]).status_code

        assert retry_5xx(send) == 200
        assert retry_5xx(send) == 200  # and once more, a duplicate

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(resend, zip(orders, refused, strict=True)))
    drain(stack)
    assert_credited_once(stack, orders)
    assert_consistent(stack, users)


def test_intermittent_queue_failures_under_load_lose_nothing(
    stack: LocalStack,
    api: Api,
) -> None:
    users = [api.new_user(prefix="fault") for _ in range(5)]
    orders = place_orders(api, users, 4, ("stripe",))
    before = injected(stack, "sqs.SendMessage")
    # Bursts of failing SendMessage: the SDK's retries absorb some, some webhooks get a 5xx.
    for after in (0, 12, 24):
        fault(
            stack,
            service="sqs",
            operation="SendMessage",
            error_code="ServiceUnavailable",
            after=after,
            count=5,
        )

    def pay_until_received(job: tuple[User, dict[str, Any]]) -> None:
        result = pay(api, job[1]["order_id"])
        status = int(result["webhook_status"])
        if status >= 500:
            status = retry_5xx(
                lambda: int(
                    api.sandbox("POST", f"/stripe/redeliver/{result['event_id']}").json()[
                        "webhook_status"
                    ]
                )
            )
        assert status == 200

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(pay_until_received, orders))
    assert injected(stack, "sqs.SendMessage") > before
    drain(stack)
    stack.clear_faults()
    assert_credited_once(stack, orders)
    assert_consistent(stack, users)


# ---------------------------------------------------------------- redemption and metering


def test_a_code_raced_under_failing_transactions_is_used_at_most_max_uses(
    stack: LocalStack,
) -> None:
    api = Api(stack)
    created = api.call(
        "POST",
        "/admin/redemption-codes",
        api.admin_token(),
        json={"name": "fault race", "quota": 777, "count": 1, "max_uses": 5},
    )
    assert created.status_code == 201, created.text
    [code] = created.json()["codes"]
    users = [api.new_user(prefix="fault") for _ in range(16)]
    codes_table = stack.table_name("RedemptionCodesTable")
    fault(
        stack,
        service="dynamodb",
        operation="TransactWriteItems",
        contains=codes_table,
        error_code="InternalServerError",
        after_commit=True,
        after=1,
        count=2,
    )
    fault(
        stack,
        service="dynamodb",
        operation="TransactWriteItems",
        contains=codes_table,
        error_code="ProvisionedThroughputExceededException",
        after=3,
        count=6,
    )

    def redeem(user: User) -> int:
        # Each user from its own address: the failure limit counts per address too.
        return Api(stack).call("POST", "/redeem", user.token, json={"code": code}).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(redeem, users))
    assert set(statuses) <= {200, 400, 500, 503}
    tables = Tables(stack)
    credited = [u for u in users if any(e["kind"] == "redeem" for e in tables.ledger(u.user_id))]
    # At most max_uses users got it, each once; everyone told 200 got it.
    assert 1 <= len(credited) <= 5
    assert {u.user_id for u, s in zip(users, statuses, strict=True) if s == 200} <= {
        u.user_id for u in credited
    }
    for user in credited:
        assert [e["delta"] for e in tables.ledger(user.user_id)] == [777]
    assert_consistent(stack, users)


def meter_until_done(api: Api, payload: Any) -> list[dict[str, Any]]:
    """A meter retries a batch that failed (a function error): repeats are duplicates."""
    for _ in range(40):
        result, failed = api.invoke("MeterUsageFunction", payload)
        if not failed:
            results: list[dict[str, Any]] = result["results"]
            return results
    raise AssertionError(f"metering kept failing: {result}")


def test_metering_batches_retried_through_failing_transactions_charge_each_request_once(
    stack: LocalStack,
    api: Api,
) -> None:
    users = [api.new_user(prefix="fault") for _ in range(5)]
    admin = api.admin_token()
    for user in users:
        response = api.call(
            "POST",
            f"/admin/accounts/{user.user_id}/adjust",
            admin,
            json={"delta": 50 * UNIT, "reason": "fault test"},
        )
        assert response.status_code == 200, response.text
    usage_table = stack.table_name("UsageTable")
    before = injected(stack, "dynamodb.TransactWriteItems")
    fault(
        stack,
        service="dynamodb",
        operation="TransactWriteItems",
        contains=usage_table,
        error_code="InternalServerError",
        after=3,
        count=12,
    )
    fault(
        stack,
        service="dynamodb",
        operation="TransactWriteItems",
        contains=usage_table,
        error_code="InternalServerError",
        after_commit=True,
        after=20,
        count=4,
    )
    fault(
        stack,
        service="dynamodb",
        operation="TransactWriteItems",
        contains=usage_table,
        error_code="ProvisionedThroughputExceededException",
        after=30,
        count=8,
    )
    batches = [
        [
            {
                "action": "charge",
                "request_id": uuid.uuid4().hex,
                "user_id": users[(b + i) % 5].user_id,
                "model": "gpt-4o-mini",
                "prompt_tokens": 1000 + 37 * i,
                "completion_tokens": 200 + b,
            }
            for i in range(6)
        ]
        for b in range(24)
    ]
    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(lambda batch: meter_until_done(api, {"events": batch}), batches))
    assert injected(stack, "dynamodb.TransactWriteItems") - before >= 12
    stack.clear_faults()
    charged: dict[str, int] = {}
    for batch, results in zip(batches, outcomes, strict=True):
        for event, result in zip(batch, results, strict=True):
            assert result["status"] in ("charged", "duplicate"), result
            charged[event["user_id"]] = charged.get(event["user_id"], 0) + int(result["quota"])
    # The retried batches again, all at once: every request is a duplicate now.
    with ThreadPoolExecutor(THREADS) as pool:
        replays = list(pool.map(lambda batch: meter_until_done(api, {"events": batch}), batches))
    assert {r["status"] for results in replays for r in results} == {"duplicate"}
    tables = Tables(stack)
    for user in users:
        account = tables.account(user.user_id)
        assert account is not None
        assert account["used_quota"] == charged[user.user_id]
        assert account["quota"] == 50 * UNIT - charged[user.user_id]
        assert account["request_count"] == sum(
            1 for batch in batches for e in batch if e["user_id"] == user.user_id
        )
    assert_consistent(stack, users)


def test_a_charge_retried_after_its_answer_was_lost_is_its_first_result(
    stack: LocalStack,
    api: Api,
) -> None:
    """A meter that lost the answer of a charge sends it again: API.md says the same
    request_id and action return the first result as `duplicate` and change nothing, also
    when the balance could not pay for it a second time."""
    user = api.new_user(prefix="fault")
    admin = api.admin_token()
    response = api.call(
        "POST",
        f"/admin/accounts/{user.user_id}/adjust",
        admin,
        json={"delta": 30_000, "reason": "fault test"},
    )
    assert response.status_code == 200, response.text
    event = {
        "action": "charge",
        "request_id": uuid.uuid4().hex,
        "user_id": user.user_id,
        "model": "gpt-4o",
        "prompt_tokens": 10_000,
        "completion_tokens": 1_000,
    }
    first = api.meter(event)
    assert first["status"] == "charged" and first["balance"] == 30_000 - first["quota"]
    assert 2 * first["quota"] > 30_000  # a second charge could not be paid
    again = api.meter(event)
    assert again["status"] == "duplicate", again
    assert (again["quota"], again["balance"]) == (first["quota"], first["balance"])
    assert user.account()["quota"] == 30_000 - first["quota"]
    assert_consistent(stack, [user])
