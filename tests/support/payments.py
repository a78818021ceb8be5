"""Top-up helpers for tests on the local stack: accounts, Stripe checkouts paid through the
sandbox, webhooks signed as Stripe documents them, and ledger/order reads on the embedded AWS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from decimal import Decimal
from typing import Any

from tests.support.stack import LocalStack, wait_for

WEBHOOK_SECRET = "whsec_local"  # the stack's documented dev default
UNIT = 500_000


def new_user(stack: LocalStack) -> tuple[str, str]:
    user = f"user-{uuid.uuid4().hex[:12]}"
    token = stack.token(user)
    assert stack.request("POST", "/account", token=token, json={}).status_code == 201
    return user, token


def checkout(stack: LocalStack, token: str, amount: int = 10) -> dict[str, Any]:
    response = stack.request(
        "POST", "/checkout", token=token, json={"amount": amount, "method": "stripe"}
    )
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    assert order["status"] == "pending" and order["pay_url"]
    return order


def get_order(stack: LocalStack, token: str, order_id: str) -> dict[str, Any]:
    response = stack.request("GET", f"/topups/{order_id}", token=token)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def wait_status(stack: LocalStack, token: str, order_id: str, status: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        order = get_order(stack, token, order_id)
        return order if order["status"] == status else None

    return wait_for(reached, timeout=30, message=f"order {order_id} to be {status}")


def queue_drained(stack: LocalStack) -> bool:
    """Every queued credit event has been processed (deleted) by the credit function."""
    attributes = stack.boto3_client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_url("CreditQueue"),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return all(int(value) == 0 for value in attributes.values())


def wait_drained(stack: LocalStack) -> None:
    wait_for(lambda: queue_drained(stack), timeout=60, message="the credit queue to drain")


def ledger_entries(stack: LocalStack, user: str) -> list[dict[str, Any]]:
    client = stack.boto3_client("dynamodb")
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "TableName": stack.table_name("LedgerTable"),
        "KeyConditionExpression": "user_id = :u",
        "ExpressionAttributeValues": {":u": {"S": user}},
        "ConsistentRead": True,
    }
    while True:
        page = client.query(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def balance(stack: LocalStack, token: str, user: str) -> int:
    """The account's quota, after checking that the ledger sums to it (invariant 1)."""
    quota = int(stack.request("GET", "/account", token=token).json()["quota"])
    total = sum(
        int(item["delta"]["N"])
        for item in ledger_entries(stack, user)
        if item["balance"]["S"] == "quota"
    )
    assert total == quota, f"ledger sums to {total}, balance is {quota}"
    return quota


def entry_ids(stack: LocalStack, user: str) -> list[str]:
    return sorted(item["entry_id"]["S"] for item in ledger_entries(stack, user))


def orders_of(stack: LocalStack, user: str) -> list[dict[str, Any]]:
    """The user's orders in the by_user index once it has caught up with every write so far
    (an index read at once would miss the newest, and "nothing written" would pass vacuously)."""
    time.sleep(stack.index_lag)
    client = stack.boto3_client("dynamodb")
    return list(
        client.query(
            TableName=stack.table_name("OrdersTable"),
            IndexName="by_user",
            KeyConditionExpression="user_id = :u",
            ExpressionAttributeValues={":u": {"S": user}},
        )["Items"]
    )


def session_id(order: dict[str, Any]) -> str:
    return str(order["pay_url"]).rstrip("/").rsplit("/", 1)[1]


def sign(body: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def session_event(
    order: dict[str, Any],
    event_type: str = "checkout.session.completed",
    *,
    amount_total: int | None = None,
    currency: str = "usd",
    payment_intent: str | None = None,
) -> bytes:
    minor = int(Decimal(order["pay_money"]) * 100) if amount_total is None else amount_total
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "livemode": False,
        "created": int(time.time()),
        "data": {
            "object": {
                "id": session_id(order),
                "object": "checkout.session",
                "mode": "payment",
                "status": "complete",
                "payment_status": "paid",
                "amount_total": minor,
                "currency": currency,
                "client_reference_id": order["order_id"],
                "metadata": {"order_id": order["order_id"]},
                "payment_intent": payment_intent or f"pi_{uuid.uuid4().hex[:20]}",
            }
        },
    }
    return json.dumps(event).encode()


def post_webhook(stack: LocalStack, body: bytes, signature: str | None) -> Any:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return stack.request("POST", "/webhooks/stripe", data=body, headers=headers)


def sandbox_event(stack: LocalStack, order: dict[str, Any], event_type: str) -> dict[str, Any]:
    response = stack.request(
        "POST", f"/_local/sandbox/stripe/events/{session_id(order)}", json={"type": event_type}
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert result["webhook_status"] == 200, result
    return result


def paid_order(
    stack: LocalStack, amount: int = 10
) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    user, token = new_user(stack)
    order = checkout(stack, token, amount)
    paid = stack.pay(order["order_id"])
    assert paid.status_code == 200 and paid.json()["webhook_status"] == 200, paid.text
    wait_status(stack, token, order["order_id"], "paid")
    return user, token, order, paid.json()


# ------------------------------------------------------------ refunds through the sandboxes


def _waffo_amount(minor: int, decimals: int) -> str:
    if decimals == 0:
        return str(minor)
    return f"{minor // 10**decimals}.{minor % 10**decimals:0{decimals}d}"


def sandbox_refund(
    stack: LocalStack,
    order: dict[str, Any],
    minor: int | None = None,
    *,
    deliver: bool = True,
    decimals: int = 2,
) -> dict[str, Any]:
    """Refund `minor` units more of a paid order (None: all that is left) the way its provider
    does: Stripe sends charge.refunded with the cumulative amount_refunded, Creem one
    refund.created per refund, Waffo one REFUND_NOTIFICATION per refund. `deliver=False` has
    the provider record (and sign) the notification without sending it yet; `redeliver` sends
    it later. The result carries "resend": what `redeliver` needs."""
    method = order["method"]
    query = "" if deliver else "?deliver=false"
    if method == "stripe":
        body: dict[str, Any] = {"type": "charge.refunded"}
        if minor is not None:
            body["amount"] = minor
        path = f"/_local/sandbox/stripe/events/{session_id(order)}{query}"
    elif method == "creem":
        body = {"type": "refund.created"}
        if minor is not None:
            body["amount"] = minor
        path = f"/_local/sandbox/creem/events/{order['order_id']}{query}"
    elif method == "waffo":
        body = {} if minor is None else {"refundAmount": _waffo_amount(minor, decimals)}
        path = f"/_local/sandbox/waffo/refund/{order['order_id']}{query}"
    else:
        raise ValueError(f"{method} sends no refunds")
    response = stack.request("POST", path, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    if deliver:
        assert result["webhook_status"] == 200, result
    key = "event_id" if method == "stripe" else "notification_id"
    result["resend"] = (method, result[key])
    return result


def redeliver(stack: LocalStack, sent: dict[str, Any]) -> int:
    """The provider sends a recorded notification (again, or for the first time)."""
    method, ident = sent["resend"]
    response = stack.request("POST", f"/_local/sandbox/{method}/redeliver/{ident}")
    assert response.status_code == 200, response.text
    return int(response.json()["webhook_status"])


def dlq_bodies(stack: LocalStack, logical_id: str = "CreditDLQ") -> list[str]:
    """What the DLQ holds now (peeked: left in the queue)."""
    sqs = stack.boto3_client("sqs")
    received = sqs.receive_message(
        QueueUrl=stack.queue_url(logical_id),
        MaxNumberOfMessages=10,
        VisibilityTimeout=0,
        WaitTimeSeconds=1,
        AttributeNames=["All"],
    )
    return [str(message["Body"]) for message in received.get("Messages", [])]
