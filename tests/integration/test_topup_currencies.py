"""Minor units per provider, on a stack whose Stripe and Waffo methods charge in Indonesian
rupiah (settings file given to LocalStack.start): Stripe takes IDR in two decimals (sen), Waffo
in whole rupiah, so each provider is asked for exactly pay_money in its own unit, and its paid
event credits (a provider asked for a hundredth of the price would report a mismatch)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api import Api, Tables, drain, pay, session_id
from tests.support.payments import sandbox_refund
from tests.support.stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
UNIT = 500_000
RUPIAH_PER_UNIT = "16000"


@pytest.fixture(scope="module")
def rupiah(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    document = json.loads((ROOT / "settings" / "local.json").read_text())
    for method in ("stripe", "waffo"):
        document["methods"][method].update(currency="IDR", unit_price=RUPIAH_PER_UNIT)
    path = tmp_path_factory.mktemp("settings") / "rupiah.json"
    path.write_text(json.dumps(document))
    local = LocalStack("rupiah")
    local.start(settings=path, env={"LOCAL_SCHEDULES": "0"})
    try:
        yield local
    finally:
        local.stop()


def test_stripe_charges_the_full_rupiah_price_in_sen_and_credits(rupiah: LocalStack) -> None:
    api, tables = Api(rupiah), Tables(rupiah)
    user = api.new_user()
    order = user.checkout("stripe", 10)
    assert (order["pay_money"], order["currency"]) == ("160000.00", "IDR")
    # What Stripe (its sandbox) was asked to charge, read back through its API.
    session = api.call(
        "GET",
        f"/_local/sandbox/stripe/v1/checkout/sessions/{session_id(order)}",
        headers={"Authorization": "Bearer sk_test_local"},
    ).json()
    assert (session["amount_total"], session["currency"]) == (16_000_000, "idr")
    page = api.session.get(order["pay_url"], timeout=60)
    assert "160000.00 IDR" in page.text

    assert pay(api, order["order_id"])["webhook_status"] == 200
    drain(rupiah)
    assert user.order(order["order_id"])["status"] == "paid"
    assert user.account()["quota"] == 10 * UNIT

    sandbox_refund(rupiah, order, 4_000_000)  # 40000.00 IDR of 160000.00: a quarter
    drain(rupiah)
    assert user.order(order["order_id"])["refunded_money"] == "40000.00"
    assert user.account()["quota"] == 10 * UNIT * 3 // 4
    assert tables.sums(user.user_id)["quota"] == user.account()["quota"]


def test_waffo_charges_the_same_price_in_whole_rupiah_and_credits(rupiah: LocalStack) -> None:
    api = Api(rupiah)
    user = api.new_user()
    order = user.checkout("waffo", 10)
    assert (order["pay_money"], order["currency"]) == ("160000", "IDR")
    result = pay(api, order["order_id"])
    assert result["webhook_status"] == 200 and result["reply_verified"] is True
    drain(rupiah)
    sent = api.sandbox("GET", f"/waffo/notifications/{order['order_id']}").json()["items"]
    assert json.loads(sent[-1]["body"])["result"]["orderAmount"] == "160000"
    assert user.order(order["order_id"])["status"] == "paid"
    assert user.account()["quota"] == 10 * UNIT

    sandbox_refund(rupiah, order, 80_000, decimals=0)  # half, in whole rupiah
    drain(rupiah)
    assert user.order(order["order_id"])["refunded_money"] == "80000"
    assert user.account()["quota"] == 5 * UNIT
