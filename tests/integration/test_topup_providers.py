"""EPay, Creem and Waffo top-ups end to end on the local stack, through their sandboxes.

For each provider: a top-up through the sandbox credits once; the same notification replayed
10 times (in sequence and concurrently) credits once; a bad signature, a correctly signed
notification with a tampered amount, and a notification for another provider's order credit
nothing and get the provider's own reply; refunds reverse once (Creem, Waffo); a Waffo status
still in progress changes nothing. Also: the options list the four methods, and a provider
whose credentials are empty is neither listed nor usable.

EPay and Creem notifications are signed here with the stack's dev credentials, from the
documented formulas; Waffo's are signed by its sandbox (which holds Waffo's private key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests

from local.provision import DEV_DEFAULTS
from tests.support.stack import LocalStack, wait_for

PROVIDERS = ("epay", "creem", "waffo")
CHECKOUT_BODIES: dict[str, dict[str, Any]] = {
    "epay": {"method": "epay", "amount": 10, "channel": "alipay"},
    "creem": {"method": "creem", "product_id": "prod_starter"},
    "waffo": {"method": "waffo", "amount": 10},
    "stripe": {"method": "stripe", "amount": 10},
}
EXPECTED = {  # pay_money, currency, quota of CHECKOUT_BODIES under settings/local.json
    "epay": ("73.00", "CNY", 5_000_000),
    "creem": ("9.99", "USD", 5_000_000),
    "waffo": ("10.00", "USD", 5_000_000),
    "stripe": ("10.00", "USD", 5_000_000),
}


def dev_secret(name: str) -> str:
    """The credential the stack runs with: the environment over the documented dev default."""
    return os.environ.get(name, DEV_DEFAULTS[name])


# ---------------------------------------------------------------- the user's side


@dataclass
class User:
    stack: LocalStack
    user_id: str
    token: str

    def get(self, path: str) -> Any:
        response = self.stack.request("GET", path, token=self.token)
        assert response.status_code == 200, response.text
        return response.json()

    def checkout(self, method: str) -> dict[str, Any]:
        response = self.stack.request(
            "POST", "/checkout", token=self.token, json=CHECKOUT_BODIES[method]
        )
        assert response.status_code == 201, response.text
        order: dict[str, Any] = response.json()
        pay_money, currency, quota = EXPECTED[method]
        assert (order["pay_money"], order["currency"], order["quota"]) == (
            pay_money,
            currency,
            quota,
        )
        assert order["status"] == "pending" and order["pay_url"]
        return order

    def order(self, order_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/topups/{order_id}")
        return result

    def wait_status(self, order_id: str, status: str) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            order = self.order(order_id)
            return order if order["status"] == status else None

        return wait_for(reached, timeout=30, message=f"order {order_id} to be {status}")

    def quota(self) -> int:
        return int(self.get("/account")["quota"])

    def ledger(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = self.get("/ledger?limit=100" + (f"&cursor={cursor}" if cursor else ""))
            entries.extend(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return entries

    def assert_credited_once(self, order_id: str, quota: int) -> None:
        entries = self.ledger()
        topups = [e for e in entries if e["kind"] == "topup" and e["ref"] == order_id]
        assert len(topups) == 1, entries
        assert topups[0]["delta"] == quota
        self.assert_ledger_matches_balance(entries)

    def assert_ledger_matches_balance(self, entries: list[dict[str, Any]] | None = None) -> None:
        entries = self.ledger() if entries is None else entries
        assert sum(e["delta"] for e in entries if e["balance"] == "quota") == self.quota()


@pytest.fixture
def user(stack: LocalStack) -> User:
    user_id = f"user-{uuid.uuid4().hex[:12]}"
    token = stack.token(user_id)
    created = stack.request("POST", "/account", token=token, json={})
    assert created.status_code == 201, created.text
    return User(stack, user_id, token)


def drain(stack: LocalStack) -> None:
    """Wait until the credit queue is empty and nothing is in flight: every queued event has
    been applied (or has failed and would be visible again)."""
    sqs = stack.boto3_client("sqs")
    url = stack.health()["queues"]["CreditQueue"]
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]

    def empty() -> bool:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return all(int(attributes.get(name, "0")) == 0 for name in names)

    wait_for(empty, timeout=60, message="the credit queue to drain")


# ---------------------------------------------------------------- the provider's side


def sandbox(stack: LocalStack, method: str, path: str, **kwargs: Any) -> Any:
    response = stack.http.request(
        method, f"{stack.base_url}/_local/sandbox{path}", timeout=60, **kwargs
    )
    assert response.status_code == 200, response.text
    return response.json()


def sent_notifications(stack: LocalStack, provider: str, order_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = sandbox(stack, "GET", f"/{provider}/notifications/{order_id}")[
        "items"
    ]
    return items


PROVIDER_ATTEMPTS = 4


def send(method: str, url: str, **kwargs: Any) -> requests.Response:
    """Deliver as a provider does: a 5xx means "not received, send again" (our handler answers
    5xx when it cannot queue, and a cold worker on a loaded machine may time out), so it is
    retried a few times; any other answer is final."""
    for _ in range(PROVIDER_ATTEMPTS - 1):
        response = requests.request(method, url, timeout=60, **kwargs)
        if response.status_code < 500:
            return response
    return requests.request(method, url, timeout=60, **kwargs)


def replay(notification: dict[str, Any], body: str | None = None) -> requests.Response:
    """Send a recorded notification again, exactly as the provider sent it (or another body
    under the same headers)."""
    raw = notification["body"] if body is None else body
    return send(
        notification["method"],
        notification["url"],
        params=notification["query"] or None,
        data=raw.encode() if raw else None,
        headers=notification["headers"],
    )


def webhook(stack: LocalStack, provider: str, **kwargs: Any) -> requests.Response:
    return send(kwargs.pop("method", "POST"), f"{stack.base_url}/webhooks/{provider}", **kwargs)


def epay_sign(params: dict[str, str], key: str) -> str:
    """EPay's documented formula: sorted non-empty params without sign/sign_type, key appended."""
    content = "&".join(
        f"{k}={v}" for k, v in sorted(params.items()) if k not in ("sign", "sign_type") and v
    )
    return hashlib.md5((content + key).encode()).hexdigest()


def epay_notify(order_id: str, money: str, key: str | None = None) -> dict[str, str]:
    params = {
        "pid": dev_secret("EPAY_PID"),
        "trade_no": "9" + secrets.token_hex(8),
        "out_trade_no": order_id,
        "type": "alipay",
        "name": "Top-up",
        "money": money,
        "trade_status": "TRADE_SUCCESS",
    }
    params["sign"] = epay_sign(params, dev_secret("EPAY_KEY") if key is None else key)
    params["sign_type"] = "MD5"
    return params


def creem_checkout_completed(order_id: str, amount: int, currency: str = "USD") -> bytes:
    event = {
        "id": f"evt_test_{secrets.token_hex(8)}",
        "eventType": "checkout.completed",
        "created_at": int(time.time() * 1000),
        "object": {
            "id": f"ch_test_{secrets.token_hex(6)}",
            "object": "checkout",
            "request_id": order_id,
            "order": {
                "id": f"ord_creem_{secrets.token_hex(6)}",
                "amount": amount,
                "currency": currency,
                "status": "paid",
                "type": "onetime",
            },
            "status": "completed",
            "metadata": {"order_id": order_id},
        },
    }
    return json.dumps(event).encode()


def creem_signature(raw: bytes, secret: str | None = None) -> str:
    key = dev_secret("CREEM_WEBHOOK_SECRET") if secret is None else secret
    return hmac.new(key.encode(), raw, hashlib.sha256).hexdigest()


def assert_accepted(provider: str, response: requests.Response) -> None:
    if provider == "epay":
        assert (response.status_code, response.text) == (200, "success")
        assert response.headers["content-type"].startswith("text/plain")
    elif provider == "creem":
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 200
        assert response.text == '{"message":"success"}'
        assert response.headers.get("x-signature")


def assert_refused(provider: str, response: requests.Response) -> None:
    if provider == "epay":
        assert response.text == "fail"
    elif provider == "creem":
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_signature"
    else:
        assert response.status_code == 200
        assert response.text == '{"message":"failed"}'
        assert response.headers.get("x-signature")


def pay(stack: LocalStack, order: dict[str, Any], outcome: str = "paid") -> dict[str, Any]:
    """The user opens the pay page, then pays (or fails to) through the sandbox. EPay learns
    of an order only then: its checkout is a signed redirect to submit.php, not an API call."""
    page = requests.get(order["pay_url"], timeout=30)
    assert page.status_code == 200, page.text
    response = stack.pay(order["order_id"], outcome)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert "error" not in result, result
    return result


# ---------------------------------------------------------------- options


def test_options_list_the_four_methods(stack: LocalStack, user: User) -> None:
    options = user.get("/topup/options")
    methods = {m["id"]: m for m in options["methods"]}
    assert list(methods) == ["stripe", "epay", "creem", "waffo"]
    assert {m: methods[m]["currency"] for m in methods} == {
        "stripe": "USD",
        "epay": "CNY",
        "creem": "USD",
        "waffo": "USD",
    }
    assert methods["epay"]["channels"] == ["alipay", "wxpay"]
    assert [p["product_id"] for p in methods["creem"]["products"]] == ["prod_starter", "prod_pro"]
    starter = methods["creem"]["products"][0]
    assert (starter["price"], starter["currency"], starter["quota"]) == ("9.99", "USD", 5_000_000)
    assert "channels" not in methods["waffo"] and "products" not in methods["waffo"]


def test_epay_checkout_refuses_an_unknown_channel(stack: LocalStack, user: User) -> None:
    response = stack.request(
        "POST", "/checkout", token=user.token, json={"method": "epay", "amount": 10, "channel": "x"}
    )
    assert response.status_code == 400
    assert user.get("/topups")["items"] == []


def test_creem_checkout_takes_a_product_not_an_amount(stack: LocalStack, user: User) -> None:
    for body in (
        {"method": "creem", "amount": 10},
        {"method": "creem", "product_id": "prod_nope"},
    ):
        response = stack.request("POST", "/checkout", token=user.token, json=body)
        assert response.status_code == 400, response.text
    assert user.get("/topups")["items"] == []


# ---------------------------------------------------------------- a full top-up


@pytest.mark.parametrize("provider", PROVIDERS)
def test_top_up_through_the_sandbox_credits_once(
    stack: LocalStack, user: User, provider: str
) -> None:
    order = user.checkout(provider)
    result = pay(stack, order)
    assert result["webhook_status"] == 200
    if provider == "waffo":
        assert result["reply_verified"] is True  # our reply's signature checked by "Waffo"
    paid = user.wait_status(order["order_id"], "paid")
    assert paid["paid_at"]
    # The history shows the order as it is now, though its index may not have caught up
    # with the payment (or, within its lag, with the order itself).
    listed = wait_for(lambda: user.get("/topups")["items"], timeout=10, message="the order")
    assert [(o["order_id"], o["status"]) for o in listed] == [(order["order_id"], "paid")]
    drain(stack)
    assert user.quota() == order["quota"]
    user.assert_credited_once(order["order_id"], order["quota"])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_top_up_through_the_hosted_pay_page(stack: LocalStack, user: User, provider: str) -> None:
    order = user.checkout(provider)
    page = requests.get(order["pay_url"], timeout=30)
    assert page.status_code == 200 and 'id="pay"' in page.text
    action = page.text.split('action="', 1)[1].split('"', 1)[0]
    submitted = requests.post(
        stack.base_url + action, data={"outcome": "paid"}, allow_redirects=False, timeout=60
    )
    assert submitted.status_code == 303
    back = submitted.headers["Location"]
    assert back.startswith(f"{stack.base_url}/console/topup?order={order['order_id']}")
    user.wait_status(order["order_id"], "paid")
    drain(stack)
    user.assert_credited_once(order["order_id"], order["quota"])


def test_epay_return_url_alone_never_credits(stack: LocalStack, user: User) -> None:
    """The browser's return carries signed fields too; only the notify may credit."""
    order = user.checkout("epay")
    query = dict(parse_qsl(urlsplit(order["pay_url"]).query))
    assert query["notify_url"] == f"{stack.base_url}/webhooks/epay"
    assert query["return_url"] != query["notify_url"]
    result = pay(stack, order, "failed")  # EPay notifies nothing for this
    assert result["webhook_status"] is None
    drain(stack)
    assert user.order(order["order_id"])["status"] == "pending"
    assert user.quota() == 0


def test_epay_gateway_refuses_a_pay_url_changed_after_signing(
    stack: LocalStack, user: User
) -> None:
    """The sandbox checks our MD5 sign independently: a lowered price is refused."""
    order = user.checkout("epay")
    cheaper = order["pay_url"].replace("money=73.00", "money=0.01")
    assert cheaper != order["pay_url"]
    refused = requests.get(cheaper, timeout=30)
    assert refused.status_code == 400 and "sign" in refused.text
    assert stack.pay(order["order_id"]).status_code == 404  # the gateway took no order
    assert requests.get(order["pay_url"], timeout=30).status_code == 200


def test_epay_notify_by_post_form_credits_once(stack: LocalStack, user: User) -> None:
    order = user.checkout("epay")
    assert requests.get(order["pay_url"], timeout=30).status_code == 200
    sent = sandbox(stack, "POST", f"/epay/notify/{order['order_id']}", json={"method": "POST"})
    assert (sent["webhook_status"], sent["webhook_body"]) == (200, "success")
    assert sent["notification"]["method"] == "POST" and sent["notification"]["body"]
    user.wait_status(order["order_id"], "paid")
    for _ in range(3):
        assert_accepted("epay", replay(sent["notification"]))
    drain(stack)
    user.assert_credited_once(order["order_id"], order["quota"])


# ---------------------------------------------------------------- duplicates


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_same_notification_ten_times_credits_once(
    stack: LocalStack, user: User, provider: str
) -> None:
    order = user.checkout(provider)
    pay(stack, order)
    user.wait_status(order["order_id"], "paid")
    [sent] = sent_notifications(stack, provider, order["order_id"])

    for _ in range(10):
        assert_accepted(provider, replay(sent))
    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(lambda _: replay(sent), range(10)))
    for reply in replies:
        assert_accepted(provider, reply)

    drain(stack)
    assert user.order(order["order_id"])["status"] == "paid"
    assert user.quota() == order["quota"]
    user.assert_credited_once(order["order_id"], order["quota"])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_concurrent_first_deliveries_credit_once(
    stack: LocalStack, user: User, provider: str
) -> None:
    """The notification arrives 10 times at once before anything was credited."""
    order = user.checkout(provider)
    if provider == "waffo":
        # Waffo's sandbox signs its PAY_SUCCESS notification without sending it.
        result = sandbox(stack, "POST", f"/waffo/notify/{order['order_id']}?deliver=false", json={})
        notification = result["notification"]
    elif provider == "epay":
        params = epay_notify(order["order_id"], order["pay_money"])
        notification = {
            "method": "GET",
            "url": f"{stack.base_url}/webhooks/epay",
            "query": params,
            "body": "",
            "headers": {},
        }
    else:
        raw = creem_checkout_completed(order["order_id"], 999)
        notification = {
            "method": "POST",
            "url": f"{stack.base_url}/webhooks/creem",
            "query": {},
            "body": raw.decode(),
            "headers": {
                "Content-Type": "application/json",
                "creem-signature": creem_signature(raw),
            },
        }
    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(lambda _: replay(notification), range(10)))
    for reply in replies:
        assert_accepted(provider, reply)
    user.wait_status(order["order_id"], "paid")
    drain(stack)
    assert user.quota() == order["quota"]
    user.assert_credited_once(order["order_id"], order["quota"])


# ---------------------------------------------------------------- refused or not credited


def bad_signature(stack: LocalStack, provider: str, order: dict[str, Any]) -> requests.Response:
    """A notification for the right amount, signed with a key that is not the provider's."""
    if provider == "epay":
        params = epay_notify(order["order_id"], order["pay_money"], key="not-the-merchant-key")
        return webhook(stack, "epay", method="GET", params=params)
    if provider == "creem":
        raw = creem_checkout_completed(order["order_id"], 999)
        return webhook(
            stack,
            "creem",
            data=raw,
            headers={"creem-signature": creem_signature(raw, "whsec_someone_else")},
        )
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raw = json.dumps(
        {
            "eventType": "PAYMENT_NOTIFICATION",
            "result": {
                "acquiringOrderId": "1" * 20,
                "merchantOrderId": order["order_id"],
                "orderStatus": "PAY_SUCCESS",
                "orderAmount": order["pay_money"],
                "orderCurrency": order["currency"],
            },
        }
    ).encode()
    signature = base64.b64encode(impostor.sign(raw, padding.PKCS1v15(), hashes.SHA256())).decode()
    return webhook(stack, "waffo", data=raw, headers={"X-SIGNATURE": signature})


@pytest.mark.parametrize("provider", PROVIDERS)
def test_bad_signature_credits_nothing(stack: LocalStack, user: User, provider: str) -> None:
    order = user.checkout(provider)
    assert_refused(provider, bad_signature(stack, provider, order))
    # and with no signature at all
    if provider == "epay":
        params = epay_notify(order["order_id"], order["pay_money"])
        del params["sign"]
        assert_refused(provider, webhook(stack, "epay", method="GET", params=params))
    else:
        body = json.dumps({"eventType": "x", "object": {}}).encode()
        assert_refused(provider, webhook(stack, provider, data=body))
    drain(stack)
    assert user.order(order["order_id"])["status"] == "pending"
    assert user.quota() == 0 and user.ledger() == []


@pytest.mark.parametrize("provider", ["creem", "waffo"])
def test_provider_notification_with_a_body_changed_after_signing_is_refused(
    stack: LocalStack, user: User, provider: str
) -> None:
    order = user.checkout(provider)
    if provider == "waffo":
        sent = sandbox(
            stack, "POST", f"/waffo/notify/{order['order_id']}", json={"orderStatus": "X"}
        )["notification"]
        body = sent["body"].replace('"orderStatus":"X"', '"orderStatus":"PAY_SUCCESS"')
    else:
        raw = creem_checkout_completed(order["order_id"], 999)
        sent = {
            "method": "POST",
            "url": f"{stack.base_url}/webhooks/creem",
            "query": {},
            "body": raw.decode(),
            "headers": {
                "Content-Type": "application/json",
                "creem-signature": creem_signature(raw),
            },
        }
        body = sent["body"].replace('"amount": 999', '"amount": 1')
    assert body != sent["body"]
    assert_refused(provider, replay(sent, body))
    drain(stack)
    assert user.order(order["order_id"])["status"] == "pending"
    assert user.quota() == 0


def tampered_amount(stack: LocalStack, provider: str, order: dict[str, Any]) -> requests.Response:
    """Correctly signed by the provider's key, but for less than the order's price."""
    if provider == "epay":
        params = epay_notify(order["order_id"], "0.01")
        return webhook(stack, "epay", method="GET", params=params)
    if provider == "creem":
        raw = creem_checkout_completed(order["order_id"], 1)
        return webhook(
            stack,
            "creem",
            data=raw,
            headers={"Content-Type": "application/json", "creem-signature": creem_signature(raw)},
        )
    result = sandbox(
        stack, "POST", f"/waffo/notify/{order['order_id']}", json={"orderAmount": "0.01"}
    )
    assert result["reply_verified"] is True
    return replay(result["notification"])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_signed_notification_with_a_tampered_amount_disputes_the_order(
    stack: LocalStack, user: User, provider: str
) -> None:
    order = user.checkout(provider)
    assert_accepted(provider, tampered_amount(stack, provider, order))
    user.wait_status(order["order_id"], "disputed")
    drain(stack)
    # The real payment arriving afterwards does not credit a disputed order either.
    if provider != "epay":
        pay(stack, order)
    else:
        assert_accepted(
            provider,
            webhook(stack, "epay", method="GET", params=epay_notify(order["order_id"], "73.00")),
        )
    drain(stack)
    assert user.order(order["order_id"])["status"] == "disputed"
    assert user.quota() == 0 and user.ledger() == []


def notify_for_another_order(
    stack: LocalStack, provider: str, other: dict[str, Any], own: dict[str, Any] | None
) -> requests.Response:
    """A correctly signed `provider` notification naming `other` (an order of another method)."""
    if provider == "epay":
        return webhook(
            stack, "epay", method="GET", params=epay_notify(other["order_id"], other["pay_money"])
        )
    if provider == "creem":
        raw = creem_checkout_completed(other["order_id"], 1000, other["currency"])
        return webhook(
            stack,
            "creem",
            data=raw,
            headers={"Content-Type": "application/json", "creem-signature": creem_signature(raw)},
        )
    assert own is not None  # Waffo's sandbox signs, for one of its own orders
    result = sandbox(
        stack,
        "POST",
        f"/waffo/notify/{own['order_id']}",
        json={
            "merchantOrderId": other["order_id"],
            "orderAmount": other["pay_money"],
            "orderCurrency": other["currency"],
        },
    )
    return replay(result["notification"])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_notification_for_another_providers_order_credits_nothing(
    stack: LocalStack, user: User, provider: str
) -> None:
    stripe_order = user.checkout("stripe")
    own = user.checkout("waffo") if provider == "waffo" else None
    assert_accepted(provider, notify_for_another_order(stack, provider, stripe_order, own))
    user.wait_status(stripe_order["order_id"], "disputed")
    drain(stack)
    assert user.quota() == 0 and user.ledger() == []
    if own is not None:
        # The Waffo order named in the signed send is untouched, and its own payment (same
        # acquiring order, status and amount) is not mistaken for a duplicate of that send.
        assert user.order(own["order_id"])["status"] == "pending"
        pay(stack, own)
        user.wait_status(own["order_id"], "paid")
        drain(stack)
        user.assert_credited_once(own["order_id"], own["quota"])
        assert user.order(stripe_order["order_id"])["status"] == "disputed"


# ---------------------------------------------------------------- Waffo statuses


def test_waffo_in_progress_status_changes_nothing(stack: LocalStack, user: User) -> None:
    order = user.checkout("waffo")
    for status in ("PAY_IN_PROGRESS", "AUTHORIZATION_REQUIRED"):
        result = sandbox(
            stack, "POST", f"/waffo/notify/{order['order_id']}", json={"orderStatus": status}
        )
        assert result["webhook_status"] == 200 and result["reply_verified"] is True
        assert result["webhook_body"] == '{"message":"success"}'
    drain(stack)
    assert user.order(order["order_id"])["status"] == "pending"

    pay(stack, order)
    user.wait_status(order["order_id"], "paid")
    sandbox(
        stack, "POST", f"/waffo/notify/{order['order_id']}", json={"orderStatus": "PAY_IN_PROGRESS"}
    )
    drain(stack)
    assert user.order(order["order_id"])["status"] == "paid"
    user.assert_credited_once(order["order_id"], order["quota"])


def test_waffo_final_failure_fails_the_order_and_nothing_credits_it_later(
    stack: LocalStack, user: User
) -> None:
    order = user.checkout("waffo")
    result = pay(stack, order, "failed")
    assert result["order_status"] == "ORDER_CLOSE" and result["reply_verified"] is True
    user.wait_status(order["order_id"], "failed")
    late = sandbox(
        stack, "POST", f"/waffo/notify/{order['order_id']}", json={"orderStatus": "PAY_SUCCESS"}
    )
    assert late["webhook_status"] == 200
    drain(stack)
    assert user.order(order["order_id"])["status"] == "failed"
    assert user.quota() == 0 and user.ledger() == []


# ---------------------------------------------------------------- refunds


def send_refund(stack: LocalStack, provider: str, order_id: str) -> dict[str, Any]:
    if provider == "creem":
        result: dict[str, Any] = sandbox(
            stack, "POST", f"/creem/events/{order_id}", json={"type": "refund.created"}
        )
    else:
        result = sandbox(stack, "POST", f"/waffo/refund/{order_id}", json={})
        assert result["reply_verified"] is True
    assert result["webhook_status"] == 200
    return result


@pytest.mark.parametrize("provider", ["creem", "waffo"])
def test_refund_reverses_once(stack: LocalStack, user: User, provider: str) -> None:
    order = user.checkout(provider)
    pay(stack, order)
    user.wait_status(order["order_id"], "paid")
    drain(stack)
    assert user.quota() == order["quota"]

    send_refund(stack, provider, order["order_id"])
    user.wait_status(order["order_id"], "refunded")
    refund = sent_notifications(stack, provider, order["order_id"])[-1]
    with ThreadPoolExecutor(max_workers=5) as pool:
        replies = list(pool.map(lambda _: replay(refund), range(5)))
    for reply in replies:
        assert_accepted(provider, reply)
    # Nothing is left to refund: the provider refuses a second refund of the order.
    path = f"/creem/events/{order['order_id']}" if provider == "creem" else None
    path = path or f"/waffo/refund/{order['order_id']}"
    body = {"type": "refund.created"} if provider == "creem" else {}
    again = stack.http.post(f"{stack.base_url}/_local/sandbox{path}", json=body, timeout=60)
    assert again.status_code == 400, again.text
    drain(stack)

    refunded = user.order(order["order_id"])
    assert (refunded["status"], refunded["refunded_money"]) == ("refunded", order["pay_money"])
    assert user.quota() == 0
    entries = user.ledger()
    reversals = [e for e in entries if e["kind"] == "reversal" and e["ref"] == order["order_id"]]
    assert len(reversals) == 1 and reversals[0]["delta"] == -order["quota"]
    user.assert_credited_once(order["order_id"], order["quota"])


def test_waffo_refund_in_progress_changes_nothing(stack: LocalStack, user: User) -> None:
    order = user.checkout("waffo")
    pay(stack, order)
    user.wait_status(order["order_id"], "paid")
    for status in ("REFUND_IN_PROGRESS", "ORDER_REFUND_FAILED"):
        result = sandbox(
            stack, "POST", f"/waffo/refund/{order['order_id']}", json={"refundStatus": status}
        )
        assert result["webhook_status"] == 200 and result["reply_verified"] is True
    drain(stack)
    assert user.order(order["order_id"])["status"] == "paid"
    user.assert_credited_once(order["order_id"], order["quota"])
    assert user.quota() == order["quota"]


# ---------------------------------------------------------------- providers switched off


@pytest.fixture(scope="module")
def unconfigured_stack() -> Iterator[LocalStack]:
    """A second stack where EPay, Creem and Waffo each miss one credential."""
    local = LocalStack("providers-off")
    local.start(env={"EPAY_KEY": "", "CREEM_WEBHOOK_SECRET": "", "WAFFO_API_KEY": ""})
    try:
        yield local
    finally:
        local.stop()


def test_provider_without_credentials_is_not_offered(unconfigured_stack: LocalStack) -> None:
    stack = unconfigured_stack
    user_id = f"user-{uuid.uuid4().hex[:12]}"
    token = stack.token(user_id)
    assert stack.request("POST", "/account", token=token, json={}).status_code == 201

    options = stack.request("GET", "/topup/options", token=token)
    assert options.status_code == 200
    assert [m["id"] for m in options.json()["methods"]] == ["stripe"]

    for provider in PROVIDERS:
        response = stack.request("POST", "/checkout", token=token, json=CHECKOUT_BODIES[provider])
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "method_unavailable"
    listed = stack.request("GET", "/topups", token=token)
    assert listed.json()["items"] == []

    # Without its key, EPay cannot verify anything: even a notify signed with the default dev
    # key is refused.
    params = epay_notify("ord_whatever", "73.00", key=DEV_DEFAULTS["EPAY_KEY"])
    assert_refused("epay", webhook(stack, "epay", method="GET", params=params))


# ---------------------------------------------------------------- sample events (Invoke API)

EVENTS = Path(__file__).resolve().parents[2] / "events"
SAMPLE_ORDER = "ord_SampleOrder0000000000000"


def sample_event(provider: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / f"payment_webhook_{provider}.json").read_text())
    return event


def test_sample_webhook_events_run_through_the_invoke_api(stack: LocalStack, user: User) -> None:
    # EPay: the sample is signed with the dev key; for a real order it is re-signed.
    epay_order = user.checkout("epay")
    event = sample_event("epay")
    stale = stack.invoke("PaymentWebhookFunction", event)  # an order that does not exist
    assert (stale["statusCode"], stale["body"]) == (200, "success")
    params = dict(event["queryStringParameters"])
    params["out_trade_no"] = epay_order["order_id"]
    params["sign"] = epay_sign(params, dev_secret("EPAY_KEY"))
    event["queryStringParameters"] = params
    event["rawQueryString"] = urlencode(params)
    replied = stack.invoke("PaymentWebhookFunction", event)
    assert (replied["statusCode"], replied["body"]) == (200, "success")
    user.wait_status(epay_order["order_id"], "paid")

    # Creem: the same, with the request id in the body.
    creem_order = user.checkout("creem")
    event = sample_event("creem")
    raw = event["body"].replace(SAMPLE_ORDER, creem_order["order_id"]).encode()
    event["body"] = raw.decode()
    event["headers"]["creem-signature"] = creem_signature(raw)
    event["headers"]["content-length"] = str(len(raw))
    assert stack.invoke("PaymentWebhookFunction", event)["statusCode"] == 200
    user.wait_status(creem_order["order_id"], "paid")

    # Waffo: its key pair belongs to the stack, so the sample's placeholder signature is refused
    # in Waffo's own way: a signed {"message":"failed"}.
    refused = stack.invoke("PaymentWebhookFunction", sample_event("waffo"))
    assert (refused["statusCode"], refused["body"]) == (200, '{"message":"failed"}')
    assert refused["headers"]["X-SIGNATURE"]

    drain(stack)
    user.assert_credited_once(epay_order["order_id"], epay_order["quota"])
    user.assert_credited_once(creem_order["order_id"], creem_order["quota"])
    assert user.quota() == epay_order["quota"] + creem_order["quota"]
