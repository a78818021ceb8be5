"""The Creem stand-in: product checkouts, a hosted checkout page, HMAC-signed webhooks.

Written from Creem's documentation (PROVIDERS.md), not from our code (no ``billing`` import):

- ``POST /v1/checkouts`` with header ``x-api-key`` and JSON ``product_id``, ``request_id``,
  ``metadata``, ``success_url`` (and optional ``customer.email``) → the checkout object with
  ``id`` and ``checkout_url``. Creem charges the product's own price: the stand-in keeps a
  product catalogue of its own (sandbox data, like products set up in Creem's dashboard):
  ``prod_starter`` 9.99 USD and ``prod_pro`` 49.00 USD, matching settings/local.json. Set
  ``CREEM_SANDBOX_PRODUCTS`` to a JSON object ``{"prod_x": {"name", "price": <minor units>,
  "currency"}}`` to replace it (for other settings files).
- Webhooks: ``{"id", "eventType", "created_at", "object"}`` with header ``creem-signature`` =
  hex HMAC-SHA256 of the raw body keyed with the webhook secret; retried until a 200.
  ``checkout.completed`` carries the checkout (``request_id``, ``metadata``) and its ``order``
  (``status`` "paid", ``type`` "onetime", ``amount`` in minor units, ``currency``);
  ``refund.created`` carries the refund (its own ``id``, ``refund_amount``, ``refund_currency``)
  with its ``order`` and ``checkout``; each refund of an order, partial or not, is its own
  refund.created. Creem sends nothing when a checkout is abandoned.

Routes under ``/_local/sandbox/creem``:
  POST /v1/checkouts                 create a checkout (CREEM_API_BASE points here)
  GET  /v1/checkouts?checkout_id=    retrieve one
  GET|POST /checkout/<checkout_id>   the hosted page; its form: outcome=paid|failed
  POST /events/<order_id>            {"type": "refund.created" | "checkout.completed",
                                     "order"?: {...changes}, "amount"?: <minor units>}: send
                                     that event, freshly made (a refund of `amount`, default
                                     all that is left; more than is left is refused);
                                     ?deliver=false records it without sending it
  POST /redeliver/<notification id>  send a sent event again, byte for byte
  GET  /notifications/<order_id>     every webhook sent for the order, exactly as sent
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from local.sandbox import SandboxContext, SandboxProvider, WebhookResult, json_response, register
from local.sandbox._support import Notification, Outbox, json_object, pay_page, random_id
from local.sandbox._support import deliver as send_until

NAME = "creem"
WEBHOOK_PATH = "/webhooks/creem"
WEBHOOK_ATTEMPTS = 3
DEFAULT_PRODUCTS: dict[str, dict[str, Any]] = {
    "prod_starter": {"name": "Starter pack", "price": 999, "currency": "USD"},
    "prod_pro": {"name": "Pro pack", "price": 4900, "currency": "USD"},
}
_ZERO_DECIMAL = {"JPY", "KRW", "VND", "IDR", "CLP", "ISK"}

_lock = threading.Lock()
_outbox = Outbox()


def signature(raw: bytes, secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), raw, hashlib.sha256).hexdigest()


def products() -> dict[str, dict[str, Any]]:
    raw = os.environ.get("CREEM_SANDBOX_PRODUCTS")
    if not raw:
        return DEFAULT_PRODUCTS
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("CREEM_SANDBOX_PRODUCTS must be a JSON object")
    return value


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _error(status: int, error: str, message: str) -> Response:
    return json_response(
        {
            "trace_id": random_id("", 32, "0123456789abcdef"),
            "status": status,
            "error": error,
            "message": [message],
        },
        status,
    )


def _authorised(ctx: SandboxContext, request: Request) -> bool:
    given = request.headers.get("x-api-key", "")
    expected = ctx.credentials.get("CREEM_API_KEY", "")
    return bool(given and expected) and hmac.compare_digest(given.encode(), expected.encode())


def create_checkout(ctx: SandboxContext, request: Request) -> Response:
    if not _authorised(ctx, request):
        return _error(403, "Forbidden", "Invalid API key")
    body = json_object(request.get_data())
    if body is None:
        return _error(400, "Bad Request", "The body must be a JSON object")
    product_id = body.get("product_id")
    if not isinstance(product_id, str) or not product_id:
        return _error(400, "Bad Request", "product_id is required")
    product = products().get(product_id)
    if product is None:
        return _error(404, "Not Found", f"Product {product_id} not found")
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    request_id = body.get("request_id") if isinstance(body.get("request_id"), str) else None
    checkout_id = random_id("ch_", 22)
    checkout = {
        "id": checkout_id,
        "object": "checkout",
        "product": product_id,
        "units": 1,
        "status": "pending",
        "checkout_url": ctx.url(f"/_local/sandbox/{NAME}/checkout/{checkout_id}"),
        "success_url": body.get("success_url"),
        "request_id": request_id,
        "metadata": metadata,
        "mode": "test",
    }
    order_id = request_id or checkout_id
    with _lock:
        current = ctx.store.get(order_id)
        if current is not None and current.provider == NAME and current.data["status"] != "pending":
            return _error(409, "Conflict", f"request_id {order_id} already completed")
        ctx.store.put(
            order_id,
            NAME,
            {
                "checkout": checkout,
                "checkout_id": checkout_id,
                "product": {"id": product_id, **product},
                "status": "pending",
            },
        )
    return json_response(checkout)


def retrieve_checkout(ctx: SandboxContext, request: Request) -> Response:
    if not _authorised(ctx, request):
        return _error(403, "Forbidden", "Invalid API key")
    found = ctx.store.find(NAME, "checkout_id", request.args.get("checkout_id", ""))
    if found is None:
        return _error(404, "Not Found", "Checkout not found")
    return json_response(found.data["checkout"])


# ------------------------------------------------------------ events


def _order(data: Mapping[str, Any], changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    product = data["product"]
    order = {
        "id": data.get("creem_order_id") or random_id("ord_", 22),
        "customer": data.get("customer_id") or random_id("cust_", 22),
        "product": product["id"],
        "amount": int(product["price"]),
        "currency": str(product["currency"]),
        "status": "paid",
        "type": "onetime",
        "created_at": _now_iso(),
        "updated_at": _now_iso(),
        "mode": "test",
    }
    order.update(changes or {})
    return order


def _event(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": random_id("evt_", 22),
        "eventType": kind,
        "created_at": int(time.time() * 1000),
        "object": dict(obj),
    }


def _checkout_completed(data: Mapping[str, Any], order: Mapping[str, Any]) -> dict[str, Any]:
    checkout = data["checkout"]
    product = data["product"]
    return _event(
        "checkout.completed",
        {
            **checkout,
            "status": "completed",
            "order": dict(order),
            "product": {
                "id": product["id"],
                "name": product.get("name", product["id"]),
                "price": int(product["price"]),
                "currency": product["currency"],
                "billing_type": "onetime",
                "status": "active",
                "mode": "test",
            },
            "customer": {
                "id": order["customer"],
                "object": "customer",
                "email": "buyer@example.com",
                "name": "Sandbox Buyer",
                "country": "NL",
                "mode": "test",
            },
            "custom_fields": [],
        },
    )


def _refund_created(
    data: Mapping[str, Any], order: Mapping[str, Any], amount: int
) -> dict[str, Any]:
    return _event(
        "refund.created",
        {
            "id": random_id("ref_", 22),
            "object": "refund",
            "status": "succeeded",
            "refund_amount": amount,
            "refund_currency": order["currency"],
            "reason": "requested_by_customer",
            "transaction": {
                "id": random_id("tran_", 22),
                "object": "transaction",
                "amount": order["amount"],
                "currency": order["currency"],
                "type": "payment",
                "status": "refunded",
                "order": order["id"],
                "customer": order["customer"],
                "mode": "test",
            },
            "checkout": {**data["checkout"], "status": "completed"},
            "order": dict(order),
            "customer": {"id": order["customer"], "object": "customer", "mode": "test"},
            "created_at": int(time.time() * 1000),
            "mode": "test",
        },
    )


def _send(
    ctx: SandboxContext, order_id: str, event: Mapping[str, Any], *, deliver: bool = True
) -> tuple[Notification, WebhookResult]:
    raw = json.dumps(event, separators=(",", ":"))
    secret = ctx.credentials.get("CREEM_WEBHOOK_SECRET", "")
    notification = Notification(
        id=random_id("ntf_"),
        order_id=order_id,
        method="POST",
        url=ctx.url(WEBHOOK_PATH),
        headers={
            "Content-Type": "application/json",
            "creem-signature": signature(raw.encode("utf-8"), secret),
        },
        body=raw,
    )
    _outbox.add(ctx.port, notification)
    if not deliver:
        return notification, WebhookResult(0, "", {})
    result = send_until(notification, lambda reply: reply.status == 200, WEBHOOK_ATTEMPTS)
    return notification, result


def _summary(
    order_id: str, event: Mapping[str, Any], notification: Notification, result: WebhookResult
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "event_id": event["id"],
        "type": event["eventType"],
        "notification_id": notification.id,
        "webhook_status": result.status,
        "webhook_body": result.body,
        "attempts": len(notification.attempts),
    }


def _complete(ctx: SandboxContext, order_id: str, outcome: str) -> dict[str, Any]:
    with _lock:
        current = ctx.store.get(order_id)
        if current is None or current.provider != NAME:
            return {"order_id": order_id, "error": "no creem checkout for this order"}
        if current.data["status"] != "pending":
            return {
                "order_id": order_id,
                "outcome": outcome,
                "error": f"the checkout is {current.data['status']}",
            }
        if outcome != "paid":
            ctx.store.update(order_id, status="failed")
            # Creem sends no webhook for an abandoned or declined checkout.
            return {"order_id": order_id, "outcome": outcome, "webhook_status": None}
        order = _order(current.data)
        updated = ctx.store.update(
            order_id, status="paid", creem_order_id=order["id"], customer_id=order["customer"]
        )
    event = _checkout_completed(updated.data, order)
    notification, result = _send(ctx, order_id, event)
    return {"outcome": outcome, **_summary(order_id, event, notification, result)}


def pay(ctx: SandboxContext, order_id: str, outcome: str) -> dict[str, Any]:
    return _complete(ctx, order_id, outcome)


def checkout_page(ctx: SandboxContext, request: Request, checkout_id: str) -> Response:
    found = ctx.store.find(NAME, "checkout_id", checkout_id)
    if found is None:
        return Response("No such checkout.", status=404, mimetype="text/plain")
    checkout = found.data["checkout"]
    if request.method == "POST":
        outcome = request.form.get("outcome", "paid")
        if outcome not in ("paid", "failed"):
            return Response("outcome must be paid or failed", status=400, mimetype="text/plain")
        result = _complete(ctx, found.order_id, outcome)
        target = str(checkout.get("success_url") or ctx.url("/"))
        if outcome == "paid":
            query = f"checkout_id={checkout_id}&request_id={checkout.get('request_id') or ''}"
            target = f"{target}{'&' if '?' in target else '?'}{query}"
        response = Response(status=303)
        response.headers["Location"] = target
        response.headers["X-Sandbox-Webhook-Status"] = str(result.get("webhook_status", ""))
        return response
    product = found.data["product"]
    currency = str(product["currency"])
    price = int(product["price"])
    amount = (
        f"{price} {currency}"
        if currency in _ZERO_DECIMAL
        else f"{price // 100}.{price % 100:02d} {currency}"
    )
    page = pay_page(
        title="Creem sandbox checkout",
        description=str(product.get("name", product["id"])),
        amount=amount,
        status=str(found.data["status"]),
        action=f"/_local/sandbox/{NAME}/checkout/{checkout_id}",
    )
    return Response(page, status=200, mimetype="text/html")


def send_event(ctx: SandboxContext, request: Request, order_id: str) -> Response:
    found = ctx.store.get(order_id)
    if found is None or found.provider != NAME:
        return json_response({"error": "no creem checkout for this order"}, 404)
    body = json_object(request.get_data())
    if body is None:
        return json_response({"error": "the body must be a JSON object"}, 400)
    kind = body.get("type", "refund.created")
    changes = body.get("order") if isinstance(body.get("order"), dict) else {}
    deliver = request.args.get("deliver", "true").lower() != "false"
    if kind == "refund.created":
        order = _order(found.data, changes)
        with _lock:
            current = ctx.store.get(order_id)
            data = current.data if current is not None else found.data
            if data["status"] != "paid":
                return json_response({"error": "only a paid checkout can be refunded"}, 400)
            already = int(data.get("amount_refunded") or 0)
            left = int(order["amount"]) - already
            amount = body.get("amount", left)
            if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
                return json_response({"error": "amount must be a positive integer"}, 400)
            if amount > left:
                return json_response({"error": f"only {left} is left to refund"}, 400)
            ctx.store.update(order_id, amount_refunded=already + amount)
        event = _refund_created(found.data, order, amount)
    elif kind == "checkout.completed":
        event = _checkout_completed(found.data, _order(found.data, changes))
    else:
        return json_response({"error": f"unsupported event type {kind!r}"}, 400)
    notification, result = _send(ctx, order_id, event, deliver=deliver)
    return json_response(_summary(order_id, event, notification, result))


def redeliver(ctx: SandboxContext, request: Request, notification_id: str) -> Response:
    sent = _outbox.get(ctx.port, notification_id)
    if sent is None:
        return json_response({"error": "no such notification"}, 404)
    result = send_until(sent, lambda reply: reply.status == 200, 1)
    return json_response(
        {
            "notification_id": notification_id,
            "webhook_status": result.status,
            "webhook_body": result.body,
        }
    )


PROVIDER = register(
    SandboxProvider(
        name=NAME,
        rules=[
            Rule("/v1/checkouts", methods=["POST"], endpoint=create_checkout),
            Rule("/v1/checkouts", methods=["GET"], endpoint=retrieve_checkout),
            Rule("/checkout/<checkout_id>", methods=["GET", "POST"], endpoint=checkout_page),
            Rule("/events/<order_id>", methods=["POST"], endpoint=send_event),
            Rule("/redeliver/<notification_id>", methods=["POST"], endpoint=redeliver),
            _outbox.listing_rule(),
        ],
        pay=pay,
    )
)
