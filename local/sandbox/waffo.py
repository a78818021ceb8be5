"""The Waffo stand-in: RSA-signed order creation, a cashier page, RSA-signed notifications.

Written from Waffo's documentation (PROVIDERS.md), not from our code (no ``billing`` import):

- Signatures are base64 RSA-SHA256 (PKCS#1 v1.5) over the exact raw body, in ``X-SIGNATURE``.
  The merchant signs its requests and webhook replies with its private key (verified here
  with the merchant's public key); Waffo signs its responses and notifications with the
  platform's private key (the stack's ``ctx.waffo`` holds both halves it needs).
- ``POST /order/create`` with ``X-API-KEY``: ``paymentRequestId`` (idempotency key, at most 32
  characters), ``merchantOrderId``, ``orderCurrency``, ``orderAmount`` (a string with the
  currency's decimals: none for IDR, JPY, KRW, VND), ``notifyUrl``, ``successRedirectUrl``,
  ``failedRedirectUrl``, ``userInfo``, ``paymentInfo``. The answer is ``{"code": "0", "msg",
  "data": {..., "acquiringOrderId", "orderStatus", "orderAction"}}`` where ``orderAction`` is a
  JSON string ``{"actionType": "WEB", "webUrl": <cashier>}``; errors carry codes such as
  ``A0001`` (API key), ``A0002`` (signature), ``A0003`` (parameters), ``A0011`` (idempotency).
- Notifications: ``{"eventType": "PAYMENT_NOTIFICATION", "result": {"acquiringOrderId",
  "merchantOrderId", "paymentRequestId", "orderStatus", "orderAmount", "orderCurrency",
  "finalDealAmount", ...}}`` and ``{"eventType": "REFUND_NOTIFICATION", "result": {...,
  "refundStatus", "refundAmount"}}``. The merchant answers 200 ``{"message":"success"}`` signed
  with its key; anything else (or a bad reply signature) makes Waffo retry.
- Paying sends ``PAY_SUCCESS``; failing sends ``ORDER_CLOSE`` (Waffo's final failure).

Routes under ``/_local/sandbox/waffo``:
  POST /order/create                 create an order (WAFFO_API_BASE points here)
  GET|POST /cashier/<acquiring id>   the cashier page; its form: outcome=paid|failed
  POST /notify/<order_id>            {"orderStatus"?, "orderAmount"?, ...changes}: send a
                                     PAYMENT_NOTIFICATION (e.g. PAY_IN_PROGRESS, or a wrong
                                     amount, for tests); ``?deliver=false`` only signs and
                                     records it (returned as "notification", for a test to send)
  POST /refund/<order_id>            {"refundAmount"?: "5.00", "refundStatus"?, ...}: refund
                                     that much more of the order (default: all that is left;
                                     more than is left is refused) and send its
                                     REFUND_NOTIFICATION: its own acquiringRefundOrderId, and
                                     refundStatus ORDER_PARTIALLY_REFUNDED until the whole
                                     amount came back, then ORDER_FULLY_REFUNDED. An explicit
                                     other refundStatus (REFUND_IN_PROGRESS, ...) refunds
                                     nothing. ``?deliver=false`` as above
  POST /redeliver/<notification id>  send a recorded notification again, byte for byte
  GET  /notifications/<order_id>     every notification sent for the order, exactly as sent
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from local.sandbox import SandboxContext, SandboxProvider, WebhookResult, json_response, register
from local.sandbox._support import Notification, Outbox, deliver, json_object, pay_page, random_id

NAME = "waffo"
NOTIFY_ATTEMPTS = 3
ZERO_DECIMAL = {"IDR", "JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF"}
THREE_DECIMAL = {"BHD", "JOD", "KWD", "OMR", "TND"}
_REQUIRED = (
    "paymentRequestId",
    "merchantOrderId",
    "orderCurrency",
    "orderAmount",
    "notifyUrl",
    "successRedirectUrl",
    "failedRedirectUrl",
)

_lock = threading.Lock()
_outbox = Outbox()


# ------------------------------------------------------------ signatures


def rsa_sign(data: bytes, private_pem: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_verify(data: bytes, signature: str, public_pem: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        key = serialization.load_pem_public_key(public_pem.encode())
        assert isinstance(key, rsa.RSAPublicKey)
        key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _signed(ctx: SandboxContext, payload: Mapping[str, Any], status: int = 200) -> Response:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    private = ctx.waffo.platform_private_pem
    if private is None:
        return Response(
            "Waffo sandbox: no platform private key (set WAFFO_PLATFORM_PRIVATE_KEY)",
            status=500,
            mimetype="text/plain",
        )
    response = Response(raw, status=status, mimetype="application/json")
    response.headers["X-SIGNATURE"] = rsa_sign(raw, private)
    return response


def _fail(ctx: SandboxContext, status: int, code: str, msg: str) -> Response:
    return _signed(ctx, {"code": code, "msg": msg, "data": None}, status)


def _amount_ok(amount: Any, currency: str) -> bool:
    if not isinstance(amount, str):
        return False
    decimals = 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2
    pattern = r"^[1-9]\d{0,12}$" if decimals == 0 else rf"^\d{{1,12}}\.\d{{{decimals}}}$"
    return bool(re.match(pattern, amount)) and any(c in "123456789" for c in amount)


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ------------------------------------------------------------ the API


def create_order(ctx: SandboxContext, request: Request) -> Response:
    api_key = request.headers.get("X-API-KEY", "")
    expected = ctx.credentials.get("WAFFO_API_KEY", "")
    if not api_key or not expected or not hmac.compare_digest(api_key.encode(), expected.encode()):
        return _fail(ctx, 401, "A0001", "Invalid API secret key")
    raw = request.get_data()
    if not rsa_verify(raw, request.headers.get("X-SIGNATURE", ""), ctx.waffo.merchant_public_pem):
        return _fail(ctx, 401, "A0002", "Invalid signature")
    body = json_object(raw)
    if body is None:
        return _fail(ctx, 400, "A0003", "Parameter validation failed: body")
    missing = [name for name in _REQUIRED if not body.get(name)]
    if missing:
        return _fail(ctx, 400, "A0003", f"Parameter validation failed: {', '.join(missing)}")
    request_id = str(body["paymentRequestId"])
    currency = str(body["orderCurrency"])
    if len(request_id) > 32:
        return _fail(ctx, 400, "A0003", "Parameter validation failed: paymentRequestId")
    if not re.fullmatch(r"[A-Z]{3}", currency):
        return _fail(ctx, 400, "A0007", "Unsupported transaction currency")
    if not _amount_ok(body["orderAmount"], currency):
        return _fail(ctx, 400, "A0003", "Parameter validation failed: orderAmount")
    order_id = str(body["merchantOrderId"])
    terms = {name: body[name] for name in ("merchantOrderId", "orderCurrency", "orderAmount")}
    with _lock:
        current = ctx.store.find(NAME, "payment_request_id", request_id)
        if current is not None:
            if current.data["terms"] != terms:
                return _fail(ctx, 400, "A0011", "Idempotency parameter mismatch error")
            data = current.data
        else:
            acquiring_id = random_id("", 20, "0123456789")
            data = {
                "payment_request_id": request_id,
                "acquiring_id": acquiring_id,
                "terms": terms,
                "request": dict(body),
                "status": "PAY_IN_PROGRESS",
            }
            ctx.store.put(order_id, NAME, data)
    action = {
        "actionType": "WEB",
        "webUrl": ctx.url(f"/_local/sandbox/{NAME}/cashier/{data['acquiring_id']}"),
    }
    return _signed(
        ctx,
        {
            "code": "0",
            "msg": "Success",
            "data": {
                "paymentRequestId": request_id,
                "merchantOrderId": order_id,
                "acquiringOrderId": data["acquiring_id"],
                "orderStatus": "PAY_IN_PROGRESS",
                "orderAction": json.dumps(action, separators=(",", ":")),
            },
        },
    )


# ------------------------------------------------------------ notifications


def _reply_ok(ctx: SandboxContext, reply: WebhookResult) -> bool:
    """Waffo takes the notification as received only on a signed {"message":"success"}."""
    if reply.status != 200:
        return False
    signature = next((v for k, v in reply.headers.items() if k.lower() == "x-signature"), "")
    if not rsa_verify(reply.body.encode(), signature, ctx.waffo.merchant_public_pem):
        return False
    body = json_object(reply.body.encode())
    return body is not None and body.get("message") == "success"


def _prepare(
    ctx: SandboxContext, order_id: str, data: Mapping[str, Any], body: Mapping[str, Any]
) -> Notification:
    """Sign a notification as Waffo does and record it in the outbox."""
    raw = json.dumps(body, separators=(",", ":"))
    private = ctx.waffo.platform_private_pem
    if private is None:
        raise RuntimeError("no Waffo platform private key: set WAFFO_PLATFORM_PRIVATE_KEY")
    notification = Notification(
        id=random_id("ntf_"),
        order_id=order_id,
        method="POST",
        url=str(data["request"]["notifyUrl"]),
        headers={
            "Content-Type": "application/json",
            "X-SIGNATURE": rsa_sign(raw.encode(), private),
        },
        body=raw,
    )
    _outbox.add(ctx.port, notification)
    return notification


def _send(
    ctx: SandboxContext,
    order_id: str,
    data: Mapping[str, Any],
    body: Mapping[str, Any],
    *,
    send: bool = True,
) -> tuple[Notification, WebhookResult, bool]:
    notification = _prepare(ctx, order_id, data, body)
    if not send:
        return notification, WebhookResult(0, "", {}), False
    result = deliver(notification, lambda reply: _reply_ok(ctx, reply), NOTIFY_ATTEMPTS)
    return notification, result, _reply_ok(ctx, result)


def _payment(data: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    request = data["request"]
    result = {
        "acquiringOrderId": data["acquiring_id"],
        "merchantOrderId": request["merchantOrderId"],
        "paymentRequestId": request["paymentRequestId"],
        "orderStatus": "PAY_SUCCESS",
        "orderAmount": request["orderAmount"],
        "orderCurrency": request["orderCurrency"],
        "finalDealAmount": request["orderAmount"],
        "orderDescription": request.get("orderDescription"),
        "orderUpdatedAt": _now_iso(),
    }
    result.update(changes)
    if result["orderStatus"] == "PAY_SUCCESS":
        result.setdefault("orderCompletedAt", _now_iso())
    return {"eventType": "PAYMENT_NOTIFICATION", "result": result}


REFUNDED_STATES = ("ORDER_PARTIALLY_REFUNDED", "ORDER_FULLY_REFUNDED")


def _minor(amount: str, currency: str) -> int | None:
    """A Waffo amount string ("5.00"; "150000" for IDR) in minor units; None if malformed."""
    if not _amount_ok(amount, currency) and amount not in ("0", "0.00", "0.000"):
        return None
    whole, _, fraction = amount.partition(".")
    return int(whole + fraction)


def _amount_text(minor: int, currency: str) -> str:
    decimals = 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2
    if decimals == 0:
        return str(minor)
    return f"{minor // 10**decimals}.{minor % 10**decimals:0{decimals}d}"


def _refund(
    ctx: SandboxContext, order_id: str, data: Mapping[str, Any], changes: Mapping[str, Any]
) -> dict[str, Any] | Response:
    """A refund of the order (this much more of it) and its notification, as Waffo sends it."""
    request = data["request"]
    currency = str(request["orderCurrency"])
    total = _minor(str(request["orderAmount"]), currency) or 0
    result: dict[str, Any] = {
        "acquiringRefundOrderId": random_id("", 20, "0123456789"),
        "refundRequestId": random_id("rr", 20),
        "acquiringOrderId": data["acquiring_id"],
        "merchantOrderId": request["merchantOrderId"],
        "paymentRequestId": request["paymentRequestId"],
        "refundCurrency": currency,
        "refundUpdatedAt": _now_iso(),
    }
    with _lock:
        current = ctx.store.get(order_id)
        already = int(((current.data if current else data).get("refunded_minor")) or 0)
        left = total - already
        status = changes.get("refundStatus")
        if status is not None and status not in REFUNDED_STATES:
            # In progress, failed, ...: no money moves.
            result.update({"refundAmount": _amount_text(left, currency), **changes})
            return {"eventType": "REFUND_NOTIFICATION", "result": result}
        amount_text = changes.get("refundAmount", _amount_text(left, currency))
        amount = _minor(str(amount_text), currency)
        if amount is None or amount <= 0:
            return json_response({"error": "refundAmount must be a positive amount"}, 400)
        if amount > left:
            return json_response(
                {"error": f"only {_amount_text(left, currency)} is left to refund"}, 400
            )
        ctx.store.update(order_id, refunded_minor=already + amount)
    result["refundAmount"] = str(amount_text)
    result["refundStatus"] = (
        "ORDER_FULLY_REFUNDED" if already + amount == total else "ORDER_PARTIALLY_REFUNDED"
    )
    result.update(changes)
    return {"eventType": "REFUND_NOTIFICATION", "result": result}


def _summary(
    order_id: str, notification: Notification, result: WebhookResult, verified: bool
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "notification_id": notification.id,
        "webhook_status": result.status,
        "webhook_body": result.body,
        "reply_verified": verified,
        "attempts": len(notification.attempts),
    }


def _complete(ctx: SandboxContext, order_id: str, outcome: str) -> dict[str, Any]:
    status = "PAY_SUCCESS" if outcome == "paid" else "ORDER_CLOSE"
    with _lock:
        current = ctx.store.get(order_id)
        if current is None or current.provider != NAME:
            return {"order_id": order_id, "error": "no waffo order for this order"}
        if current.data["status"] != "PAY_IN_PROGRESS":
            return {
                "order_id": order_id,
                "outcome": outcome,
                "error": f"the order is {current.data['status']}",
            }
        updated = ctx.store.update(order_id, status=status)
    notification, result, verified = _send(
        ctx, order_id, updated.data, _payment(updated.data, {"orderStatus": status})
    )
    return {
        "outcome": outcome,
        "order_status": status,
        **_summary(order_id, notification, result, verified),
    }


def pay(ctx: SandboxContext, order_id: str, outcome: str) -> dict[str, Any]:
    return _complete(ctx, order_id, outcome)


def cashier(ctx: SandboxContext, request: Request, acquiring_id: str) -> Response:
    found = ctx.store.find(NAME, "acquiring_id", acquiring_id)
    if found is None:
        return Response("No such order.", status=404, mimetype="text/plain")
    order = found.data["request"]
    if request.method == "POST":
        outcome = request.form.get("outcome", "paid")
        if outcome not in ("paid", "failed"):
            return Response("outcome must be paid or failed", status=400, mimetype="text/plain")
        result = _complete(ctx, found.order_id, outcome)
        target = order["successRedirectUrl"] if outcome == "paid" else order["failedRedirectUrl"]
        response = Response(status=303)
        response.headers["Location"] = str(target)
        response.headers["X-Sandbox-Webhook-Status"] = str(result.get("webhook_status", ""))
        return response
    page = pay_page(
        title="Waffo sandbox cashier",
        description=str(order.get("orderDescription") or order["merchantOrderId"]),
        amount=f"{order['orderAmount']} {order['orderCurrency']}",
        status=str(found.data["status"]),
        action=f"/_local/sandbox/{NAME}/cashier/{acquiring_id}",
    )
    return Response(page, status=200, mimetype="text/html")


def _hook(ctx: SandboxContext, request: Request, order_id: str, kind: str) -> Response:
    found = ctx.store.get(order_id)
    if found is None or found.provider != NAME:
        return json_response({"error": "no waffo order for this order"}, 404)
    changes = json_object(request.get_data())
    if changes is None:
        return json_response({"error": "the body must be a JSON object"}, 400)
    body = (
        _payment(found.data, changes)
        if kind == "payment"
        else _refund(ctx, order_id, found.data, changes)
    )
    if isinstance(body, Response):
        return body
    send = request.args.get("deliver", "true").lower() != "false"
    notification, result, verified = _send(ctx, order_id, found.data, body, send=send)
    return json_response(
        {
            "notification": notification.public(),
            **_summary(order_id, notification, result, verified),
        }
    )


def notify(ctx: SandboxContext, request: Request, order_id: str) -> Response:
    return _hook(ctx, request, order_id, "payment")


def refund(ctx: SandboxContext, request: Request, order_id: str) -> Response:
    return _hook(ctx, request, order_id, "refund")


def redeliver(ctx: SandboxContext, request: Request, notification_id: str) -> Response:
    sent = _outbox.get(ctx.port, notification_id)
    if sent is None:
        return json_response({"error": "no such notification"}, 404)
    result = deliver(sent, lambda reply: _reply_ok(ctx, reply), 1)
    return json_response(_summary(sent.order_id, sent, result, _reply_ok(ctx, result)))


PROVIDER = register(
    SandboxProvider(
        name=NAME,
        rules=[
            Rule("/order/create", methods=["POST"], endpoint=create_order),
            Rule("/cashier/<acquiring_id>", methods=["GET", "POST"], endpoint=cashier),
            Rule("/notify/<order_id>", methods=["POST"], endpoint=notify),
            Rule("/refund/<order_id>", methods=["POST"], endpoint=refund),
            Rule("/redeliver/<notification_id>", methods=["POST"], endpoint=redeliver),
            _outbox.listing_rule(),
        ],
        pay=pay,
    )
)
