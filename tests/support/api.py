"""Helpers over the public entry points of a running local stack, shared by the stateful
property test, the fault suite, the fuzzer and the benchmarks: users with tokens, checkouts
and sandbox payments, the Invoke API, signed Stripe events, the credit queue, and consistent
reads of the tables for the checks.

Requests that may fail a redemption go out from a loopback address of their own
(`loopback_session`): the redeem failure limit also counts per source address, and 127.0.0.1
is shared by the whole suite.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import count
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from tests.support.stack import LocalStack, wait_for

UNIT = 500_000  # quota_per_unit of settings/local.json
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "whsec_local")  # dev default
CHECKOUT_BODIES: dict[str, dict[str, Any]] = {
    "stripe": {"method": "stripe"},
    "epay": {"method": "epay", "channel": "alipay"},
    "creem": {"method": "creem", "product_id": "prod_starter"},
    "waffo": {"method": "waffo"},
}
PRODUCT_QUOTA = {"prod_starter": 5_000_000}

_addresses = count(1)
_run = uuid.uuid4().int % 200 + 20


def new_loopback_ip() -> str:
    """A loopback address no other client of this run uses (the gateway's sourceIp)."""
    n = next(_addresses) + 40_000  # apart from the ranges other test modules draw from
    return f"127.{_run}.{n // 250 % 250 + 1}.{n % 250 + 1}"


class _FromAddress(HTTPAdapter):
    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__(pool_maxsize=32)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def loopback_session(address: str | None = None) -> requests.Session:
    session = requests.Session()
    session.mount("http://", _FromAddress(address or new_loopback_ip()))
    return session


@dataclass
class Api:
    """One client of the stack (its own HTTP session and source address)."""

    stack: LocalStack
    session: requests.Session = field(default_factory=loopback_session)

    def call(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.session.request(
            method,
            self.stack.base_url + path,
            headers=headers,
            timeout=kwargs.pop("timeout", 120),
            **kwargs,
        )

    def invoke(self, function: str, payload: Any) -> tuple[Any, bool]:
        """Lambda Invoke API (RequestResponse): (result, function_error)."""
        response = self.call(
            "POST", f"/2015-03-31/functions/{function}/invocations", data=json.dumps(payload)
        )
        assert response.status_code == 200, response.text
        return response.json(), bool(response.headers.get("X-Amz-Function-Error"))

    def meter(self, payload: Any) -> Any:
        result, failed = self.invoke("MeterUsageFunction", payload)
        assert not failed, result
        return result

    def new_user(self, referral_code: str | None = None, prefix: str = "user") -> User:
        user_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
        token = self.stack.token(user_id)
        body = {} if referral_code is None else {"referral_code": referral_code}
        response = self.call("POST", "/account", token, json=body)
        assert response.status_code == 201, response.text
        return User(self, user_id, token, response.json())

    def admin_token(self) -> str:
        return self.stack.token(f"admin-{uuid.uuid4().hex[:8]}", admin=True)

    def sandbox(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.call(method, f"/_local/sandbox{path}", **kwargs)


@dataclass
class User:
    api: Api
    user_id: str
    token: str
    created: dict[str, Any]

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.api.call(method, path, self.token, **kwargs)

    def account(self) -> dict[str, Any]:
        response = self.call("GET", "/account")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def checkout(self, method: str, amount: int = 10) -> dict[str, Any]:
        body = dict(CHECKOUT_BODIES[method])
        if "product_id" not in body:
            body["amount"] = amount
        response = self.call("POST", "/checkout", json=body)
        assert response.status_code == 201, response.text
        order: dict[str, Any] = response.json()
        # The user opens the pay page (EPay hears of the order only then).
        page = self.api.session.get(order["pay_url"], timeout=60)
        assert page.status_code == 200, page.text
        return order

    def order(self, order_id: str) -> dict[str, Any]:
        response = self.call("GET", f"/topups/{order_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


def pay(api: Api, order_id: str, outcome: str = "paid") -> dict[str, Any]:
    response = api.call("POST", f"/_local/sandbox/pay/{order_id}", json={"outcome": outcome})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def session_id(order: dict[str, Any]) -> str:
    return str(order["pay_url"]).rstrip("/").rsplit("/", 1)[1]


def stripe_signature(body: bytes, secret: str = STRIPE_WEBHOOK_SECRET) -> str:
    """Stripe-Signature as Stripe documents it: v1 = hex HMAC-SHA256 of "{t}.{body}"."""
    stamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def stripe_event(event_type: str, obj: dict[str, Any]) -> bytes:
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "livemode": False,
        "created": int(time.time()),
        "data": {"object": obj},
    }
    return json.dumps(event, separators=(",", ":")).encode()


def stripe_refund(order: dict[str, Any], payment_intent: str | None = None) -> bytes:
    """A signed-to-be charge.refunded for an order (as Stripe sends for a full refund)."""
    minor = int(Decimal(order["pay_money"]) * 100)
    return stripe_event(
        "charge.refunded",
        {
            "id": f"ch_{uuid.uuid4().hex[:24]}",
            "object": "charge",
            "amount": minor,
            "amount_refunded": minor,
            "currency": str(order["currency"]).lower(),
            "metadata": {"order_id": order["order_id"]},
            "payment_intent": payment_intent or f"pi_{uuid.uuid4().hex[:24]}",
            "refunded": True,
            "status": "succeeded",
        },
    )


def post_stripe(api: Api, body: bytes) -> requests.Response:
    return api.call(
        "POST",
        "/webhooks/stripe",
        data=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": stripe_signature(body)},
    )


def replay_notification(api: Api, notification: dict[str, Any]) -> requests.Response:
    """Send a provider's recorded notification again, byte for byte."""
    raw = notification.get("body") or ""
    return api.session.request(
        notification["method"],
        notification["url"],
        params=notification.get("query") or None,
        data=raw.encode() if raw else None,
        headers=notification["headers"],
        timeout=120,
    )


# ---------------------------------------------------------------- queues and tables


def queue_depth(stack: LocalStack, logical_id: str) -> int:
    attributes = stack.boto3_client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_url(logical_id),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def drain(stack: LocalStack, logical_id: str = "CreditQueue", timeout: float = 90) -> None:
    """Wait until every queued message was handled (deleted, or moved to the DLQ)."""
    wait_for(
        lambda: queue_depth(stack, logical_id) == 0,
        timeout=timeout,
        interval=0.1,
        message=f"{logical_id} to drain",
    )


@dataclass
class Tables:
    """Consistent reads of the stack's tables (for the checks, never for actions)."""

    stack: LocalStack
    client: Any = None

    def __post_init__(self) -> None:
        self.client = self.stack.boto3_client("dynamodb")
        self.names = self.stack.health()["tables"]

    def account(self, user_id: str) -> dict[str, Any] | None:
        item = self.client.get_item(
            TableName=self.names["AccountsTable"],
            Key={"user_id": {"S": user_id}},
            ConsistentRead=True,
        ).get("Item")
        return None if item is None else plain(item)

    def ledger(self, user_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.names["LedgerTable"],
            "KeyConditionExpression": "user_id = :u",
            "ExpressionAttributeValues": {":u": {"S": user_id}},
            "ConsistentRead": True,
        }
        while True:
            page = self.client.query(**kwargs)
            items += [plain(item) for item in page["Items"]]
            if "LastEvaluatedKey" not in page:
                return sorted(items, key=lambda e: e["seq"])
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def order(self, order_id: str) -> dict[str, Any]:
        item = self.client.get_item(
            TableName=self.names["OrdersTable"],
            Key={"order_id": {"S": order_id}},
            ConsistentRead=True,
        )["Item"]
        return plain(item)

    def sums(self, user_id: str) -> dict[str, int]:
        totals = {"quota": 0, "aff_quota": 0}
        for entry in self.ledger(user_id):
            totals[entry["balance"]] += int(entry["delta"])
        return totals


def plain(item: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB item as plain values (numbers as int)."""

    def value(attribute: dict[str, Any]) -> Any:
        ((kind, raw),) = attribute.items()
        if kind == "N":
            return int(raw) if "." not in raw else float(raw)
        if kind == "M":
            return {k: value(v) for k, v in raw.items()}
        if kind == "L":
            return [value(v) for v in raw]
        if kind == "NULL":
            return None
        return raw

    return {name: value(attribute) for name, attribute in item.items()}
