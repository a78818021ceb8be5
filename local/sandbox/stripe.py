"""The Stripe stand-in: Checkout Sessions API, a hosted pay page, and signed webhooks.

Written from Stripe's documentation, not from our code (it imports neither ``billing`` nor the
stripe SDK's verification):

- ``POST /v1/checkout/sessions`` takes the form encoding the SDKs send (``a[b][0][c]=v``),
  authenticated with ``Authorization: Bearer <secret key>``, and honours ``Idempotency-Key``
  (the same key and parameters replay the first response; other parameters are refused).
- Webhooks carry ``Stripe-Signature: t=<unix>,v1=<hex>`` where v1 is the HMAC-SHA256, keyed
  with the endpoint secret, of ``"{t}.{raw body}"`` (https://docs.stripe.com/webhooks#verify-manually).
  Each event is a JSON ``{"id": "evt_...", "object": "event", "type", "data": {"object"}}``.

Routes under ``/_local/sandbox/stripe``:
  POST /v1/checkout/sessions              create a session (the SDK's API base points here)
  GET  /v1/checkout/sessions/<id>         retrieve it
  GET  /pay/<id>                          the hosted pay page (Pay / Fail buttons)
  POST /pay/<id>                          the page's form: outcome=paid|failed, then redirect
  POST /events/<id>                       {"type": "checkout.session.expired" | "charge.refunded"
                                          | "charge.dispute.created" | ...}: send that event;
                                          ?deliver=false records it (signed when sent) without
                                          sending it, for a test to deliver later, out of order
  POST /redeliver/<event id>              send an event again, freshly signed (as Stripe retries)

Refunds are partial when asked: ``{"type": "charge.refunded", "amount": <minor units>}`` refunds
that much more of the charge (default: all that is left; more than is left is refused, as
Stripe refuses it). As Stripe does, the event's charge carries the cumulative
``amount_refunded`` and ``refunded: true`` only once all of it came back, so a redelivered
older event says less than a newer one.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import secrets
import string
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from local.sandbox import SandboxContext, SandboxProvider, json_response, register

NAME = "stripe"
WEBHOOK_PATH = "/webhooks/stripe"
API_VERSION = "2025-01-27.acacia"
SESSION_EVENTS = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
)
CHARGE_EVENTS = ("charge.refunded", "charge.dispute.created")

_lock = threading.Lock()
# (port, api key, idempotency key) -> (parameters fingerprint, status, response body)
_idempotency: dict[tuple[int, str, str], tuple[str, int, str]] = {}
# (port, event id) -> raw body, for redelivery
_sent: dict[tuple[int, str], bytes] = {}


def _random_id(prefix: str, length: int = 24) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def _stripe_error(
    status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
) -> Response:
    error: dict[str, Any] = {"type": kind, "message": message}
    if param:
        error["param"] = param
    return json_response({"error": error}, status)


# ------------------------------------------------------------ form decoding

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's bracket form encoding (``line_items[0][price_data][currency]=usd``) as nested
    dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        match = _KEY.match(key)
        if match is None:
            raise ValueError(f"invalid parameter name {key!r}")
        path = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        node: Any = root
        for index, part in enumerate(path):
            last = index == len(path) - 1
            if isinstance(node, list):
                position = int(part) if part.isdigit() else len(node)
                while len(node) <= position:
                    node.append(None)
                if last:
                    node[position] = value
                else:
                    if node[position] is None:
                        node[position] = [] if path[index + 1].isdigit() else {}
                    node = node[position]
            else:
                if last:
                    node[part] = value
                else:
                    if part not in node:
                        node[part] = [] if path[index + 1].isdigit() else {}
                    node = node[part]
    return root


# ------------------------------------------------------------ signing


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header value for a raw body, as Stripe documents it."""
    stamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{stamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def _deliver(ctx: SandboxContext, raw: bytes) -> dict[str, Any]:
    secret = ctx.credentials.get("STRIPE_WEBHOOK_SECRET", "")
    result = ctx.post_webhook(
        WEBHOOK_PATH,
        raw,
        {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": sign(raw, secret),
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        },
    )
    return {"webhook_status": result.status, "webhook_body": result.body}


def _send_event(
    ctx: SandboxContext, event_type: str, obj: Mapping[str, Any], *, deliver: bool = True
) -> dict[str, Any]:
    event = {
        "id": _random_id("evt_"),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": {"object": dict(obj)},
    }
    raw = json.dumps(event, separators=(",", ":")).encode()
    with _lock:
        _sent[(ctx.port, str(event["id"]))] = raw
    if not deliver:
        return {"event_id": event["id"], "type": event_type, "webhook_status": None}
    return {"event_id": event["id"], "type": event_type, **_deliver(ctx, raw)}


# ------------------------------------------------------------ the API


def _authorised(ctx: SandboxContext, request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    key = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
    expected = ctx.credentials.get("STRIPE_SECRET_KEY", "")
    if not key or not expected or not hmac.compare_digest(key, expected):
        return None
    return key


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _session_from(ctx: SandboxContext, params: Mapping[str, Any]) -> dict[str, Any] | Response:
    if params.get("mode") != "payment":
        return _stripe_error(400, "This sandbox supports mode=payment only.", param="mode")
    items = params.get("line_items")
    if not isinstance(items, list) or not items:
        return _stripe_error(400, "line_items is required in payment mode.", param="line_items")
    total = 0
    currency: str | None = None
    for position, item in enumerate(items):
        price = item.get("price_data") if isinstance(item, dict) else None
        quantity = _int(item.get("quantity")) if isinstance(item, dict) else None
        if not isinstance(price, dict) or quantity is None or quantity < 1:
            return _stripe_error(
                400,
                "Each line item needs price_data and a quantity.",
                param=f"line_items[{position}]",
            )
        unit = _int(price.get("unit_amount"))
        item_currency = str(price.get("currency") or "").lower()
        name = (price.get("product_data") or {}).get("name")
        if unit is None or not re.fullmatch(r"[a-z]{3}", item_currency) or not name:
            return _stripe_error(
                400,
                "price_data needs currency, unit_amount and product_data[name].",
                param=f"line_items[{position}][price_data]",
            )
        if currency not in (None, item_currency):
            return _stripe_error(400, "All line items must share one currency.")
        currency = item_currency
        total += unit * quantity
    if not params.get("success_url"):
        return _stripe_error(400, "success_url is required.", param="success_url")
    session_id = _random_id("cs_test_", 58)
    now = int(time.time())
    metadata = params.get("metadata") if isinstance(params.get("metadata"), dict) else {}
    return {
        "id": session_id,
        "object": "checkout.session",
        "mode": "payment",
        "status": "open",
        "payment_status": "unpaid",
        "amount_subtotal": total,
        "amount_total": total,
        "currency": currency,
        "client_reference_id": params.get("client_reference_id"),
        "metadata": metadata,
        "payment_intent": None,
        "success_url": params.get("success_url"),
        "cancel_url": params.get("cancel_url"),
        "url": ctx.url(f"/_local/sandbox/{NAME}/pay/{session_id}"),
        "livemode": False,
        "created": now,
        "expires_at": now + 24 * 3600,
    }


def create_session(ctx: SandboxContext, request: Request) -> Response:
    api_key = _authorised(ctx, request)
    if api_key is None:
        return _stripe_error(401, "Invalid API Key provided.")
    raw = request.get_data(as_text=True)
    try:
        params = decode_form(raw)
    except ValueError as exc:
        return _stripe_error(400, str(exc))
    idempotency_key = request.headers.get("Idempotency-Key")
    fingerprint = hashlib.sha256(raw.encode()).hexdigest()
    if idempotency_key:
        with _lock:
            seen = _idempotency.get((ctx.port, api_key, idempotency_key))
        if seen is not None:
            if seen[0] != fingerprint:
                return _stripe_error(
                    400,
                    "Keys for idempotent requests can only be used with the same "
                    "parameters they were first used with.",
                    kind="idempotency_error",
                )
            response = Response(seen[2], status=seen[1], mimetype="application/json")
            response.headers["Idempotent-Replayed"] = "true"
            return response
    session = _session_from(ctx, params)
    if isinstance(session, Response):
        return session
    payment_intent_data = params.get("payment_intent_data")
    pi_metadata = (
        (payment_intent_data or {}).get("metadata")
        if isinstance(payment_intent_data, dict)
        else None
    )
    order_id = str(
        session.get("client_reference_id") or session["metadata"].get("order_id") or session["id"]
    )
    first_price = params["line_items"][0]["price_data"]
    ctx.store.put(
        order_id,
        NAME,
        {
            "session": session,
            "description": str(first_price["product_data"]["name"]),
            "session_id": session["id"],
            "payment_intent_metadata": pi_metadata if isinstance(pi_metadata, dict) else {},
            "status": "open",
        },
    )
    body = json.dumps(session)
    if idempotency_key:
        with _lock:
            _idempotency[(ctx.port, api_key, idempotency_key)] = (fingerprint, 200, body)
    return Response(body, status=200, mimetype="application/json")


def _find(ctx: SandboxContext, session_id: str) -> tuple[str, dict[str, Any]] | None:
    found = ctx.store.find(NAME, "session_id", session_id)
    return None if found is None else (found.order_id, found.data)


def retrieve_session(ctx: SandboxContext, request: Request, session_id: str) -> Response:
    if _authorised(ctx, request) is None:
        return _stripe_error(401, "Invalid API Key provided.")
    found = _find(ctx, session_id)
    if found is None:
        return _stripe_error(404, f"No such checkout.session: '{session_id}'", param="id")
    return json_response(found[1]["session"])


# ------------------------------------------------------------ paying and events


def _complete(ctx: SandboxContext, order_id: str, outcome: str) -> dict[str, Any]:
    """The user pays (or the payment fails): update the session, then send the webhook."""
    with _lock:
        current = ctx.store.get(order_id)
        if current is None or current.provider != NAME:
            return {"order_id": order_id, "error": "no stripe session for this order"}
        if current.data["status"] != "open":
            return {
                "order_id": order_id,
                "outcome": outcome,
                "error": f"the session is {current.data['status']}",
            }
        session = dict(current.data["session"])
        session["status"] = "complete"
        if outcome == "paid":
            session["payment_status"] = "paid"
            session["payment_intent"] = _random_id("pi_")
            event_type = "checkout.session.completed"
        else:
            session["payment_status"] = "unpaid"
            session["payment_intent"] = _random_id("pi_")
            event_type = "checkout.session.async_payment_failed"
        ctx.store.update(order_id, session=session, status=outcome, charge_id=_random_id("ch_"))
    sent = _send_event(ctx, event_type, session)
    return {
        "order_id": order_id,
        "outcome": outcome,
        "session_id": session["id"],
        "payment_intent": session["payment_intent"],
        **sent,
    }


def pay(ctx: SandboxContext, order_id: str, outcome: str) -> dict[str, Any]:
    return _complete(ctx, order_id, outcome)


def _charge(data: Mapping[str, Any], amount_refunded: int) -> dict[str, Any]:
    session = data["session"]
    amount = int(session["amount_total"])
    return {
        "id": data.get("charge_id") or _random_id("ch_"),
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "captured": True,
        "currency": session["currency"],
        "livemode": False,
        "metadata": dict(data.get("payment_intent_metadata") or {}),
        "paid": True,
        "payment_intent": session["payment_intent"],
        "refunded": amount_refunded >= amount,
        "status": "succeeded",
    }


def _refund(
    ctx: SandboxContext, order_id: str, data: Mapping[str, Any], requested: Any
) -> dict[str, Any] | Response:
    """Refund `requested` minor units more of the charge (None: all that is left); returns the
    charge as it is after the refund."""
    amount = int(data["session"]["amount_total"])
    with _lock:
        current = ctx.store.get(order_id)
        already = int((current.data if current else data).get("amount_refunded") or 0)
        left = amount - already
        if requested is None:
            requested = left
        if not isinstance(requested, int) or isinstance(requested, bool) or requested <= 0:
            return _stripe_error(400, "amount must be a positive integer.", param="amount")
        if requested > left:
            return _stripe_error(
                400,
                f"Refund amount ({requested}) is greater than unrefunded amount on charge ({left})",
                param="amount",
            )
        total = already + requested
        ctx.store.update(order_id, amount_refunded=total)
    return _charge(data, total)


def send_event(ctx: SandboxContext, request: Request, session_id: str) -> Response:
    """Send one event about a session, as Stripe would when it happens."""
    found = _find(ctx, session_id)
    if found is None:
        return _stripe_error(404, f"No such checkout.session: '{session_id}'")
    order_id, data = found
    body = request.get_json(silent=True) or {}
    event_type = body.get("type") if isinstance(body, dict) else None
    deliver = request.args.get("deliver", "true").lower() != "false"
    session = dict(data["session"])
    obj: dict[str, Any]
    if event_type == "checkout.session.expired":
        obj = {**session, "status": "expired", "payment_status": "unpaid", "url": None}
        ctx.store.update(order_id, status="expired", session=obj)
    elif event_type in SESSION_EVENTS:
        obj = session
    elif event_type in CHARGE_EVENTS:
        if not session.get("payment_intent"):
            return _stripe_error(400, "The session has no payment yet.")
        if event_type == "charge.refunded":
            refunded = _refund(ctx, order_id, data, body.get("amount"))
            if isinstance(refunded, Response):
                return refunded
            obj = refunded
        else:
            charge = _charge(data, int(data.get("amount_refunded") or 0))
            obj = {
                "id": _random_id("dp_"),
                "object": "dispute",
                "amount": charge["amount"],
                "currency": charge["currency"],
                "charge": charge["id"],
                "payment_intent": charge["payment_intent"],
                "livemode": False,
                "metadata": {},
                "reason": "fraudulent",
                "status": "needs_response",
            }
    else:
        return _stripe_error(400, f"Unsupported event type {event_type!r}.")
    sent = _send_event(ctx, str(event_type), obj, deliver=deliver)
    return json_response({"order_id": order_id, **sent})


def redeliver(ctx: SandboxContext, request: Request, event_id: str) -> Response:
    with _lock:
        raw = _sent.get((ctx.port, event_id))
    if raw is None:
        return _stripe_error(404, f"No such event: '{event_id}'")
    return json_response({"event_id": event_id, **_deliver(ctx, raw)})


# ------------------------------------------------------------ the hosted page

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Stripe sandbox checkout</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto}}
button{{font-size:1.1rem;padding:.6rem 1.4rem;margin-right:1rem}}</style></head>
<body><h1>Stripe sandbox</h1>
<p id="description">{description}</p>
<p>Amount: <strong id="amount">{amount} {currency}</strong></p>
<p>Status: <span id="status">{status}</span></p>
<form method="post" action="{action}">
<button type="submit" name="outcome" value="paid" id="pay">Pay</button>
<button type="submit" name="outcome" value="failed" id="fail">Fail</button>
</form></body></html>
"""


def _major(amount: int, currency: str) -> str:
    zero_decimal = {
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    }
    if currency.lower() in zero_decimal:
        return str(amount)
    if currency.lower() in {"bhd", "jod", "kwd", "omr", "tnd"}:  # three-decimal on Stripe
        return f"{amount // 1000}.{amount % 1000:03d}"
    return f"{amount // 100}.{amount % 100:02d}"


def pay_page(ctx: SandboxContext, request: Request, session_id: str) -> Response:
    found = _find(ctx, session_id)
    if found is None:
        return Response("No such checkout session.", status=404, mimetype="text/plain")
    order_id, data = found
    if request.method == "POST":
        outcome = request.form.get("outcome", "paid")
        if outcome not in ("paid", "failed"):
            return Response("outcome must be paid or failed", status=400, mimetype="text/plain")
        result = _complete(ctx, order_id, outcome)
        session = data["session"]
        target = (
            session.get("success_url")
            if outcome == "paid"
            else (session.get("cancel_url") or session.get("success_url"))
        )
        response = Response(status=303)
        response.headers["Location"] = str(target)
        response.headers["X-Sandbox-Webhook-Status"] = str(result.get("webhook_status", ""))
        return response
    session = data["session"]
    items = session.get("amount_total", 0)
    page = _PAGE.format(
        description=html.escape(str(data.get("description") or session["id"])),
        amount=html.escape(_major(int(items), str(session["currency"]))),
        currency=html.escape(str(session["currency"]).upper()),
        status=html.escape(str(data.get("status"))),
        action=html.escape(f"/_local/sandbox/{NAME}/pay/{session_id}"),
    )
    return Response(page, status=200, mimetype="text/html")


PROVIDER = register(
    SandboxProvider(
        name=NAME,
        rules=[
            Rule("/v1/checkout/sessions", methods=["POST"], endpoint=create_session),
            Rule("/v1/checkout/sessions/<session_id>", methods=["GET"], endpoint=retrieve_session),
            Rule("/pay/<session_id>", methods=["GET", "POST"], endpoint=pay_page),
            Rule("/events/<session_id>", methods=["POST"], endpoint=send_event),
            Rule("/redeliver/<event_id>", methods=["POST"], endpoint=redeliver),
        ],
        pay=pay,
    )
)
