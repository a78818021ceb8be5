"""The EPay (易支付) stand-in: submit.php, a cashier page, and MD5-signed notifies.

Written from the EPay protocol (PROVIDERS.md), not from our code (it does not import
``billing``):

- Sign: every parameter except ``sign`` and ``sign_type``, empty values dropped, sorted by
  name, joined as ``k1=v1&k2=v2``, the merchant key appended directly, MD5, lowercase hex.
- ``submit.php`` (GET or POST form) takes pid, type, out_trade_no, notify_url, return_url,
  name, money (yuan, up to 2 decimals), sign_type=MD5, sign; a bad sign is refused.
- When the user pays, the gateway calls notify_url with GET (query) carrying pid, trade_no,
  out_trade_no, type, name, money, trade_status=TRADE_SUCCESS, sign_type, sign, and retries
  until the body is exactly ``success``; then it sends the browser to return_url with the same
  signed fields. EPay sends nothing for an unpaid trade.

EPay has no create call: the gateway first hears of an order when the user's browser opens the
pay_url (submit.php). So ``POST /_local/sandbox/pay/{order_id}`` works for an EPay order once
its pay_url has been opened (as a paying user always does); before that it is 404.

Routes under ``/_local/sandbox/epay``:
  GET|POST /submit.php                   the merchant's payment request → the cashier page
  GET|POST /cashier/<trade_no>           the cashier page; its form: outcome=paid|failed
  POST /notify/<order_id>                {"trade_status"?, "money"?, "method"?: "GET"|"POST",
                                         "out_trade_no"?, ...}: send a signed notify with these
                                         fields changed (a gateway gone wrong, for tests)
  GET  /notifications/<order_id>         every notify sent for the order, exactly as sent
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from local.sandbox import (
    SandboxContext,
    SandboxProvider,
    WebhookResult,
    json_response,
    register,
)
from local.sandbox._support import Notification, Outbox, deliver, pay_page, random_id

NAME = "epay"
CHANNELS = ("alipay", "wxpay", "qqpay", "bank", "jdpay")
NOTIFY_ATTEMPTS = 5
_REQUIRED = ("pid", "type", "out_trade_no", "notify_url", "return_url", "name", "money", "sign")
_MONEY = re.compile(r"^\d{1,10}(\.\d{1,2})?$")

_lock = threading.Lock()
_outbox = Outbox()


def sign(params: Mapping[str, str], key: str) -> str:
    content = "&".join(
        f"{name}={params[name]}"
        for name in sorted(params)
        if name not in ("sign", "sign_type") and params[name] != ""
    )
    return hashlib.md5((content + key).encode("utf-8")).hexdigest()  # noqa: S324 - EPay's scheme


def _credentials(ctx: SandboxContext) -> tuple[str, str]:
    return ctx.credentials.get("EPAY_PID", ""), ctx.credentials.get("EPAY_KEY", "")


def _error(message: str, status: int = 400) -> Response:
    # EPay gateways answer a bad submit with a plain error page.
    return Response(f"EPay sandbox: {message}", status=status, mimetype="text/plain")


def submit(ctx: SandboxContext, request: Request) -> Response:
    params = {name: value for name, value in request.values.items()}
    pid, key = _credentials(ctx)
    missing = [name for name in _REQUIRED if not params.get(name)]
    if missing:
        return _error(f"missing {', '.join(missing)}")
    if not pid or not key or not hmac.compare_digest(params["pid"].encode(), pid.encode()):
        return _error("unknown merchant (pid)")
    if params.get("sign_type", "MD5").upper() != "MD5":
        return _error("sign_type must be MD5")
    if not hmac.compare_digest(sign(params, key).encode(), params["sign"].lower().encode()):
        return _error("签名校验失败 (sign mismatch)")
    if params["type"] not in CHANNELS:
        return _error(f"unknown payment type {params['type']}")
    if not _MONEY.match(params["money"]) or Decimal(params["money"]) <= 0:
        return _error("money must be a positive amount in yuan with at most 2 decimals")
    order_id = params["out_trade_no"]
    fields = {name: params[name] for name in _REQUIRED if name != "sign"}
    with _lock:
        current = ctx.store.get(order_id)
        if current is not None:
            if current.provider != NAME or current.data["request"] != fields:
                return _error("订单号重复 (out_trade_no already used with other fields)")
            trade_no = str(current.data["trade_no"])
        else:
            trade_no = random_id("2026", 16, "0123456789")
            ctx.store.put(
                order_id, NAME, {"request": fields, "trade_no": trade_no, "status": "pending"}
            )
    return _cashier_page(ctx, order_id, trade_no)


def _cashier_page(ctx: SandboxContext, order_id: str, trade_no: str) -> Response:
    session = ctx.store.get(order_id)
    assert session is not None
    fields = session.data["request"]
    page = pay_page(
        title=f"EPay sandbox ({fields['type']})",
        description=fields["name"],
        amount=f"¥{fields['money']} CNY",
        status=str(session.data["status"]),
        action=f"/_local/sandbox/{NAME}/cashier/{trade_no}",
    )
    return Response(page, status=200, mimetype="text/html")


def _notify_fields(
    ctx: SandboxContext, data: Mapping[str, Any], changes: Mapping[str, str]
) -> dict[str, str]:
    pid, key = _credentials(ctx)
    request = data["request"]
    fields = {
        "pid": pid,
        "trade_no": str(data["trade_no"]),
        "out_trade_no": request["out_trade_no"],
        "type": request["type"],
        "name": request["name"],
        "money": request["money"],
        "trade_status": "TRADE_SUCCESS",
    }
    fields.update({str(k): str(v) for k, v in changes.items()})
    fields["sign"] = sign(fields, key)
    fields["sign_type"] = "MD5"
    return fields


def _send_notify(
    ctx: SandboxContext,
    order_id: str,
    data: Mapping[str, Any],
    changes: Mapping[str, str],
    method: str = "GET",
) -> tuple[Notification, WebhookResult]:
    fields = _notify_fields(ctx, data, changes)
    url = data["request"]["notify_url"]
    if method == "POST":
        notification = Notification(
            id=random_id("ntf_"),
            order_id=order_id,
            method="POST",
            url=url,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            body=urlencode(fields),
        )
    else:
        notification = Notification(
            id=random_id("ntf_"), order_id=order_id, method="GET", url=url, headers={}, query=fields
        )
    _outbox.add(ctx.port, notification)
    # The gateway retries until the body is exactly `success`.
    result = deliver(notification, lambda reply: reply.body == "success", NOTIFY_ATTEMPTS)
    return notification, result


def _return_url(data: Mapping[str, Any], fields: Mapping[str, str]) -> str:
    target = str(data["request"]["return_url"])
    return f"{target}{'&' if '?' in target else '?'}{urlencode(fields)}"


def _complete(ctx: SandboxContext, order_id: str, outcome: str) -> dict[str, Any]:
    with _lock:
        current = ctx.store.get(order_id)
        if current is None or current.provider != NAME:
            return {"order_id": order_id, "error": "no epay trade for this order"}
        if current.data["status"] != "pending":
            return {
                "order_id": order_id,
                "outcome": outcome,
                "error": f"the trade is {current.data['status']}",
            }
        ctx.store.update(order_id, status=outcome)
        data = dict(current.data)
    if outcome != "paid":
        # EPay notifies only paid trades: an unpaid one simply never completes.
        return {
            "order_id": order_id,
            "outcome": outcome,
            "trade_no": data["trade_no"],
            "webhook_status": None,
        }
    notification, result = _send_notify(ctx, order_id, data, {})
    return {
        "order_id": order_id,
        "outcome": outcome,
        "trade_no": data["trade_no"],
        "notification_id": notification.id,
        "webhook_status": result.status,
        "webhook_body": result.body,
        "attempts": len(notification.attempts),
        "return_url": _return_url(data, notification.query),
    }


def pay(ctx: SandboxContext, order_id: str, outcome: str) -> dict[str, Any]:
    return _complete(ctx, order_id, outcome)


def cashier(ctx: SandboxContext, request: Request, trade_no: str) -> Response:
    found = ctx.store.find(NAME, "trade_no", trade_no)
    if found is None:
        return _error("no such trade", 404)
    if request.method == "GET":
        return _cashier_page(ctx, found.order_id, trade_no)
    outcome = request.form.get("outcome", "paid")
    if outcome not in ("paid", "failed"):
        return _error("outcome must be paid or failed")
    result = _complete(ctx, found.order_id, outcome)
    response = Response(status=303)
    # After paying, the browser goes back to return_url with the signed fields (display only:
    # the merchant must not credit from it).
    response.headers["Location"] = result.get("return_url") or str(
        found.data["request"]["return_url"]
    )
    response.headers["X-Sandbox-Webhook-Status"] = str(result.get("webhook_status", ""))
    return response


def notify(ctx: SandboxContext, request: Request, order_id: str) -> Response:
    found = ctx.store.get(order_id)
    if found is None or found.provider != NAME:
        return json_response({"error": "no epay trade for this order"}, 404)
    body = request.get_json(silent=True) or {}
    if not isinstance(body, dict):
        return json_response({"error": "the body must be a JSON object"}, 400)
    method = str(body.pop("method", "GET")).upper()
    if method not in ("GET", "POST"):
        return json_response({"error": "method must be GET or POST"}, 400)
    notification, result = _send_notify(ctx, order_id, found.data, body, method)
    return json_response(
        {
            "order_id": order_id,
            "notification": notification.public(),
            "webhook_status": result.status,
            "webhook_body": result.body,
        }
    )


PROVIDER = register(
    SandboxProvider(
        name=NAME,
        rules=[
            Rule("/submit.php", methods=["GET", "POST"], endpoint=submit),
            Rule("/cashier/<trade_no>", methods=["GET", "POST"], endpoint=cashier),
            Rule("/notify/<order_id>", methods=["POST"], endpoint=notify),
            _outbox.listing_rule(),
        ],
        pay=pay,
    )
)
