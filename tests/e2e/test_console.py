"""The top-up console (/console/topup) in a real browser, against the local stack.

Each test is one user's story through the page: sign in (with a referral link), top up through
the sandbox's hosted pay page, redeem a code an admin generated in the admin view, transfer a
referral reward, read the history; and the error states (bad amount, bad code, too many tries,
unknown referral code, expired session). Screenshots: tests/artifacts/screenshots/.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import random
import re
import uuid
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from playwright.sync_api import Page, Route, expect

from tests.e2e.conftest import ConsoleLog, screenshot
from tests.support.metering import wait_for_indexes
from tests.support.stack import LocalStack, wait_for

QUOTA_PER_UNIT = 500_000  # settings/local.json
TIMES = "\u00d7"  # the multiplication sign the page prints
MIN_TRANSFER = 500_000


# ---------------------------------------------------------------- helpers


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def grouped(quota: int) -> str:
    return f"{quota:,}"


def topup_url(base: str, query: str = "") -> str:
    return f"{base}/console/topup{query}"


def sign_in(page: Page, base: str, user_id: str, *, admin: bool = False, query: str = "") -> None:
    """The local dev sign-in form, then wait for the signed-in page."""
    page.goto(topup_url(base, query))
    page.get_by_label("User ID").fill(user_id)
    if admin:
        page.get_by_label("Sign in as an administrator").check()
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#user-name")).to_have_text(user_id)
    expect(page.locator("#balance-quota")).not_to_have_text("—")


def sign_out(page: Page) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("User ID")).to_be_visible()


def api_account(
    stack: LocalStack, user_id: str, referral_code: str | None = None
) -> dict[str, Any]:
    body = {"referral_code": referral_code} if referral_code else {}
    response = stack.request("POST", "/account", token=stack.token(user_id), json=body)
    assert response.status_code in (200, 201), response.text
    account: dict[str, Any] = response.json()
    return account


def api_get_account(stack: LocalStack, user_id: str) -> dict[str, Any]:
    response = stack.request("GET", "/account", token=stack.token(user_id))
    assert response.status_code == 200, response.text
    account: dict[str, Any] = response.json()
    return account


def api_checkout(stack: LocalStack, user_id: str, **body: Any) -> dict[str, Any]:
    response = stack.request("POST", "/checkout", token=stack.token(user_id), json=body)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


def api_paid_topup(stack: LocalStack, user_id: str, amount: int) -> dict[str, Any]:
    """A top-up paid through the sandbox, waited for until it is credited."""
    order = api_checkout(stack, user_id, amount=amount, method="stripe")
    assert stack.pay(order["order_id"]).status_code == 200
    token = stack.token(user_id)

    def paid() -> dict[str, Any] | None:
        current: dict[str, Any] = stack.request(
            "GET", f"/topups/{order['order_id']}", token=token
        ).json()
        return current if current["status"] == "paid" else None

    return wait_for(paid, timeout=30, message=f"order {order['order_id']} paid")


def balance_card(page: Page) -> dict[str, str]:
    return {
        "quota": page.locator("#balance-quota").inner_text(),
        "money": page.locator("#balance-money").inner_text(),
    }


def choose_method(page: Page, label: str) -> None:
    page.get_by_role("radio", name=re.compile(rf"^{re.escape(label)}\b")).check()


def summary_row(page: Page, term: str) -> Any:
    return page.locator(
        "#topup-summary .summary-row", has=page.locator("dt", has_text=term)
    ).locator("dd")


def redeem_field(page: Page) -> Any:
    return page.get_by_role("textbox", name="Code", exact=True)


# ---------------------------------------------------------------- sign-in, referral, top-up


def test_invited_user_signs_in_and_tops_up_through_the_sandbox(
    stack: LocalStack, page: Page
) -> None:
    inviter = api_account(stack, new_id("inviter"))
    invitee = new_id("invitee")

    page.goto(topup_url(stack.base_url, f"?aff={inviter['aff_code']}"))
    expect(
        page.get_by_text(f"invited with the referral code {inviter['aff_code']}")
    ).to_be_visible()
    screenshot(page, "01-sign-in-with-referral")
    page.get_by_label("User ID").fill(invitee)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#page-status")).to_have_text(
        f"Welcome! Your account was created with the referral code {inviter['aff_code']}."
    )
    expect(page.locator("#balance-quota")).to_have_text("0")
    assert api_get_account(stack, invitee)["inviter_id"] == inviter["user_id"]
    assert "aff=" not in page.url  # the code is used once, not carried around

    choose_method(page, "Stripe")
    page.get_by_role("radio", name=re.compile(r"^10 ")).check()
    expect(summary_row(page, "You get")).to_have_text("5,000,000 quota")
    expect(summary_row(page, "To pay")).to_have_text("10.00 USD")
    screenshot(page, "02-top-up-form")

    page.get_by_role("button", name="Top Up").click()
    page.wait_for_url(re.compile(r"/_local/sandbox/stripe/pay/"))
    expect(page.locator("#amount")).to_contain_text("10.00")
    screenshot(page, "03-sandbox-pay-page")
    page.get_by_role("button", name="Pay").click()

    page.wait_for_url(re.compile(r"/console/topup"))
    order_card = page.locator("#order-card")
    expect(order_card.locator("#order-status")).to_contain_text("Paid")
    expect(order_card.locator("#order-status")).to_contain_text("5,000,000 quota added")
    expect(order_card).to_contain_text("10.00 USD")
    expect(page.locator("#balance-quota")).to_have_text("5,000,000")
    expect(page.locator("#balance-money")).to_have_text("$10.00")
    assert "order=" not in page.url

    orders = page.locator("#orders-body tr")
    expect(orders).to_have_count(1)
    expect(orders.first).to_contain_text("Paid")
    expect(orders.first).to_contain_text("10.00 USD")
    page.get_by_role("tab", name="Ledger").click()
    expect(page.locator("#ledger-body tr").first).to_contain_text("Top-up")
    expect(page.locator("#ledger-body tr").first).to_contain_text("+5,000,000")
    screenshot(page, "04-paid-and-credited")
    assert api_get_account(stack, invitee)["quota"] == 10 * QUOTA_PER_UNIT


def test_price_is_exact_before_paying_and_the_server_price_is_shown_after(
    stack: LocalStack, page: Page
) -> None:
    user = new_id("pricing")
    sign_in(page, stack.base_url, user)

    # 7.30 CNY x 3 is 21.90 exactly (the float product would be 21.900000000000002).
    choose_method(page, "EPay · WeChat Pay")
    page.get_by_label("Amount in units").fill("3")
    expect(summary_row(page, "Price")).to_have_text(f"3 {TIMES} 7.30 CNY = 21.90 CNY")
    expect(summary_row(page, "Discount")).to_have_text("None")
    expect(summary_row(page, "To pay")).to_have_text("21.90 CNY")

    # A preset with a discount: 100 x 7.30 x 0.95 = 693.50 CNY, and the preset says so.
    preset = page.get_by_role("radio", name=re.compile(r"^100 "))
    expect(page.locator("label.choice", has=preset)).to_contain_text("693.50 CNY")
    expect(page.locator("label.choice", has=preset)).to_contain_text("5% off")
    preset.check()
    expect(page.get_by_label("Amount in units")).to_have_value("100")
    expect(summary_row(page, "Discount")).to_have_text(f"5% off ({TIMES} 0.95)")
    expect(summary_row(page, "To pay")).to_have_text("693.50 CNY")
    choose_method(page, "Stripe")
    expect(summary_row(page, "To pay")).to_have_text("95.00 USD")

    # A product-based method shows its packages instead of an amount.
    choose_method(page, "Creem")
    expect(page.get_by_label("Amount in units")).to_be_hidden()
    page.get_by_role("radio", name=re.compile("Starter pack")).check()
    expect(summary_row(page, "To pay")).to_have_text("9.99 USD")
    expect(summary_row(page, "You get")).to_have_text("5,000,000 quota")

    choose_method(page, "EPay · WeChat Pay")
    page.get_by_label("Amount in units").fill("3")
    screenshot(page, "05-exact-price")
    page.get_by_role("button", name="Top Up").click()
    page.wait_for_url(re.compile(r"/_local/sandbox/epay/"))
    expect(page.locator("#amount")).to_contain_text("21.90")
    page.get_by_role("button", name="Pay").click()

    page.wait_for_url(re.compile(r"/console/topup"))
    expect(page.locator("#order-status")).to_contain_text("Paid")
    details = page.locator("#order-details")
    expect(details).to_contain_text("21.90 CNY")
    expect(details).to_contain_text("WeChat Pay")
    expect(page.locator("#balance-quota")).to_have_text("1,500,000")
    expect(page.locator("#balance-money")).to_have_text("$3.00")
    orders = stack.request("GET", "/topups", token=stack.token(user)).json()["items"]
    assert [(o["pay_money"], o["currency"], o["status"]) for o in orders] == [
        ("21.90", "CNY", "paid")
    ]


def test_a_failed_payment_shows_failed_and_credits_nothing(stack: LocalStack, page: Page) -> None:
    sign_in(page, stack.base_url, new_id("fails"))
    choose_method(page, "Stripe")
    page.get_by_label("Amount in units").fill("7")
    page.get_by_role("button", name="Top Up").click()
    page.wait_for_url(re.compile(r"/_local/sandbox/stripe/pay/"))
    page.get_by_role("button", name="Fail").click()

    page.wait_for_url(re.compile(r"/console/topup"))
    expect(page.locator("#order-status")).to_contain_text("Failed")
    expect(page.locator("#order-status")).to_contain_text("Nothing was charged")
    expect(page.locator("#balance-quota")).to_have_text("0")
    expect(page.locator("#orders-body tr").first).to_contain_text("Failed")
    screenshot(page, "06-payment-failed")


def test_the_page_polls_a_pending_order_until_it_is_paid(stack: LocalStack, page: Page) -> None:
    user = new_id("poller")
    api_account(stack, user)
    order = api_checkout(stack, user, amount=2, method="stripe")
    sign_in(page, stack.base_url, user, query=f"?order={order['order_id']}")

    status = page.locator("#order-status")
    expect(status).to_contain_text("Pending")
    expect(status).to_contain_text("Waiting for the payment")
    expect(page.locator("#order-details")).to_contain_text("2.00 USD")
    screenshot(page, "07-order-pending")

    assert stack.pay(order["order_id"]).status_code == 200
    expect(status).to_contain_text("Paid")
    expect(page.locator("#balance-quota")).to_have_text("1,000,000")


def test_bad_amounts_are_refused_inline_and_create_no_order(stack: LocalStack, page: Page) -> None:
    user = new_id("amounts")
    sign_in(page, stack.base_url, user)
    choose_method(page, "Stripe")
    amount = page.get_by_label("Amount in units")
    error = page.locator("#topup-amount-error")
    cases = {
        "": "Enter an amount from 1 to 10,000.",
        "0": "The amount must be from 1 to 10,000 units.",
        "10001": "The amount must be from 1 to 10,000 units.",
        "1.5": "Enter a whole number of units from 1 to 10,000 (no decimals).",
        "1e3": "Enter a whole number of units from 1 to 10,000 (no decimals).",
        "-5": "Enter a whole number of units from 1 to 10,000 (no decimals).",
    }
    for typed, message in cases.items():
        amount.fill(typed)
        page.get_by_role("button", name="Top Up").click()
        expect(error).to_have_text(message)
        expect(amount).to_have_attribute("aria-invalid", "true")
        expect(amount).to_be_focused()
        expect(summary_row(page, "To pay")).to_have_text("Choose an amount to see the price.")
    screenshot(page, "08-bad-amount")
    assert "/console/topup" in page.url

    amount.fill("12")
    expect(error).to_be_hidden()
    expect(amount).not_to_have_attribute("aria-invalid", "true")
    expect(summary_row(page, "To pay")).to_have_text("12.00 USD")
    listed = stack.request("GET", "/topups", token=stack.token(user)).json()
    assert listed["items"] == []


# ---------------------------------------------------------------- redemption codes


def generate_codes(page: Page, name: str, quota: int, count: int) -> list[str]:
    page.get_by_label("Batch name").fill(name)
    page.get_by_label("Quota per code").fill(str(quota))
    page.get_by_label("Number of codes").fill(str(count))
    page.get_by_role("button", name="Generate codes").click()
    expect(page.locator("#codes-form-status")).to_have_text(f"Generated {count} code(s).")
    items = page.locator("#new-codes-list li")
    expect(items).to_have_count(count)
    return [text.strip() for text in items.all_inner_texts()]


def test_admin_generates_codes_and_a_user_redeems_one(
    stack: LocalStack, new_page: Callable[..., Page], own_ip_url: str, console_log: ConsoleLog
) -> None:
    console_log.expect_http(400)  # the disabled and the reused code
    admin_page = new_page()
    sign_in(admin_page, own_ip_url, new_id("admin"), admin=True)
    expect(admin_page.get_by_text("Admin", exact=True)).to_be_visible()
    expect(admin_page.get_by_role("heading", name="Admin · Redemption codes")).to_be_visible()

    batch = new_id("e2e-batch")
    codes = generate_codes(admin_page, batch, 1_000_000, 2)
    expect(admin_page.locator("#new-codes-summary")).to_contain_text("1,000,000 quota ($2.00) each")
    with admin_page.expect_download() as download_info:
        admin_page.get_by_role("button", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename.startswith("codes-b-")
    rows = list(csv.DictReader(io.StringIO(download.path().read_text(encoding="utf-8"))))
    assert [row["code"] for row in rows] == codes
    assert {(row["name"], row["quota"], row["max_uses"]) for row in rows} == {
        (batch, "1000000", "1")
    }
    listed = admin_page.locator("#codes-body tr", has_text=batch)
    expect(listed).to_have_count(2)
    expect(listed.first).to_contain_text("Active")
    screenshot(admin_page, "09-admin-codes")

    doomed_batch = new_id("e2e-disable")
    [doomed] = generate_codes(admin_page, doomed_batch, 3_000_000, 1)
    row = admin_page.locator("#codes-body tr", has_text=doomed_batch)
    admin_page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=re.compile("^Disable code")).click()
    expect(admin_page.locator("#codes-list-status")).to_contain_text("disabled")
    expect(row).to_contain_text("Disabled")
    expect(row.get_by_role("button", name=re.compile("^Disable code"))).to_be_disabled()

    user_page = new_page()
    user = new_id("redeemer")
    sign_in(user_page, own_ip_url, user)
    expect(user_page.get_by_role("heading", name="Admin · Redemption codes")).to_be_hidden()
    redeem_field(user_page).fill(codes[0])
    user_page.get_by_role("button", name="Redeem").click()
    status = user_page.locator("#redeem-status")
    expect(status).to_have_text("Code redeemed: +1,000,000 quota ($2.00) added to your balance.")
    expect(user_page.locator("#balance-quota")).to_have_text("1,000,000")
    expect(redeem_field(user_page)).to_have_value("")
    user_page.get_by_role("tab", name="Ledger").click()
    expect(user_page.locator("#ledger-body tr").first).to_contain_text("Redemption code")
    screenshot(user_page, "10-redeemed")

    for refused in (doomed, codes[0]):  # disabled; already redeemed by this user
        redeem_field(user_page).fill(refused)
        user_page.get_by_role("button", name="Redeem").click()
        expect(status).to_have_text("This code cannot be redeemed.")
        expect(status).to_have_attribute("data-kind", "error")
    screenshot(user_page, "11-redeem-refused")
    expect(user_page.locator("#balance-quota")).to_have_text("1,000,000")
    assert api_get_account(stack, user)["quota"] == 1_000_000

    admin_page.locator("#codes-refresh").click()
    expect(
        admin_page.locator("#codes-body tr", has_text=batch).filter(has_text="1 / 1")
    ).to_have_count(1)


def test_too_many_bad_codes_say_when_to_retry(
    stack: LocalStack, page: Page, own_ip_url: str, console_log: ConsoleLog
) -> None:
    console_log.expect_http(400, 429)
    sign_in(page, own_ip_url, new_id("guesser"))
    status = page.locator("#redeem-status")
    button = page.get_by_role("button", name="Redeem")
    for attempt in range(10):
        redeem_field(page).fill(f"NOPE-{attempt:04d}-{uuid.uuid4().hex[:8]}")
        button.click()
        expect(status).to_have_text("This code cannot be redeemed.")
    redeem_field(page).fill("NOPE-LAST")
    button.click()
    expect(status).to_have_text(
        re.compile(r"^Too many failed attempts\. Try again in (10 min|9 min \d+ s) \(at .+\)\.$")
    )
    expect(button).to_be_disabled()
    screenshot(page, "12-redeem-too-many")


def test_an_empty_code_is_refused_before_asking_the_server(stack: LocalStack, page: Page) -> None:
    sign_in(page, stack.base_url, new_id("empty-code"))
    redeem_field(page).fill("   ")
    page.get_by_role("button", name="Redeem").click()
    expect(page.locator("#redeem-code-error")).to_have_text("Enter a redemption code.")
    expect(redeem_field(page)).to_be_focused()


# ---------------------------------------------------------------- referral


def test_inviter_sees_the_reward_and_transfers_it_to_the_balance(
    stack: LocalStack, page: Page
) -> None:
    inviter = new_id("rewarded")
    code = api_account(stack, inviter)["aff_code"]
    invitee = new_id("buyer")
    api_account(stack, invitee, referral_code=code)
    api_paid_topup(stack, invitee, amount=10)  # 5,000,000 quota; a 10% rebate is 500,000
    wait_for(
        lambda: api_get_account(stack, inviter)["aff_quota"] > 0,
        timeout=30,
        message="the referral rebate",
    )
    reward = api_get_account(stack, inviter)["aff_quota"]
    assert reward == 500_000

    sign_in(page, stack.base_url, inviter)
    expect(page.get_by_label("Your referral code")).to_have_value(code)
    expect(page.get_by_label("Your referral link")).to_have_value(
        f"{stack.base_url}/console/topup?aff={code}"
    )
    expect(page.locator("#aff-quota")).to_have_text("500,000")
    expect(page.locator("#aff-history")).to_have_text("500,000")
    expect(page.locator("#aff-count")).to_have_text("1")
    expect(page.locator("#transfer-hint")).to_contain_text(
        "Minimum transfer: 500,000 quota ($1.00)."
    )
    screenshot(page, "13-referral-reward")

    amount = page.get_by_label("Reward quota to transfer")
    error = page.locator("#transfer-amount-error")
    transfer = page.get_by_role("button", name="Transfer to Balance")
    amount.fill("1000")
    transfer.click()
    expect(error).to_have_text("The minimum transfer is 500,000 quota.")
    amount.fill("600000")
    transfer.click()
    expect(error).to_have_text("You have 500,000 reward quota; enter at most that.")

    page.get_by_role("button", name="All").click()
    expect(amount).to_have_value("500000")
    transfer.click()
    expect(page.locator("#transfer-status")).to_have_text(
        "Moved 500,000 quota ($1.00) to your balance."
    )
    expect(page.locator("#balance-quota")).to_have_text("500,000")
    expect(page.locator("#aff-quota")).to_have_text("0")
    expect(page.locator("#aff-history")).to_have_text("500,000")
    page.get_by_role("tab", name="Ledger").click()
    expect(page.locator("#ledger-body tr", has_text="Reward transfer")).to_have_count(2)
    screenshot(page, "14-referral-transferred")
    account = api_get_account(stack, inviter)
    assert (account["quota"], account["aff_quota"]) == (500_000, 0)


def test_the_copy_buttons_copy_the_referral_link_and_code(
    stack: LocalStack, new_page: Callable[..., Page]
) -> None:
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    user = new_id("sharer")
    sign_in(page, stack.base_url, user)
    code = api_get_account(stack, user)["aff_code"]

    page.get_by_role("button", name="Copy link").click()
    expect(page.locator("#copy-status")).to_have_text("Link copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == (
        f"{stack.base_url}/console/topup?aff={code}"
    )
    page.get_by_role("button", name="Copy code").click()
    expect(page.locator("#copy-status")).to_have_text("Code copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == code


def test_an_unknown_referral_code_creates_nothing_until_corrected(
    stack: LocalStack, page: Page, console_log: ConsoleLog
) -> None:
    console_log.expect_http(400)
    user = new_id("typo")
    page.goto(topup_url(stack.base_url, "?aff=NOSUCHCODE1"))
    page.get_by_label("User ID").fill(user)
    page.get_by_role("button", name="Sign in").click()

    field = page.get_by_label("Referral code (optional)")
    expect(field).to_have_value("NOSUCHCODE1")
    expect(field).to_be_focused()
    expect(page.locator("#setup-referral-error")).to_contain_text(
        "The referral code does not exist."
    )
    expect(page.locator("#app")).to_be_hidden()
    screenshot(page, "15-invalid-referral-code")
    missing = stack.request("GET", "/account", token=stack.token(user))
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "account_not_found"

    field.fill("")
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("#page-status")).to_have_text("Welcome! Your account is ready.")
    expect(page.locator("#balance-quota")).to_have_text("0")
    assert api_get_account(stack, user)["inviter_id"] is None


# ---------------------------------------------------------------- history


def test_history_pages_through_orders_and_the_ledger(stack: LocalStack, page: Page) -> None:
    user = new_id("historian")
    api_account(stack, user)
    admin_token = stack.token(new_id("admin"), admin=True)
    for n in range(1, 13):  # 12 ledger entries, newest last
        response = stack.request(
            "POST",
            f"/admin/accounts/{user}/adjust",
            token=admin_token,
            json={"delta": n * 1000, "reason": f"e2e {n}"},
        )
        assert response.status_code == 200, response.text
    for amount in range(1, 12):  # 11 pending orders
        api_checkout(stack, user, amount=amount, method="stripe")
    # GET /topups reads the orders' by_user index, which lags behind the writes as in AWS: a
    # console signed in at once may list the newest order only on its next load.
    wait_for_indexes(stack)

    sign_in(page, stack.base_url, user)
    orders = page.locator("#orders-body tr")
    expect(orders).to_have_count(10)
    expect(orders.first).to_contain_text("11.00 USD")  # newest first
    expect(orders.first).to_contain_text("Pending")
    page.locator("#orders-more").click()
    expect(orders).to_have_count(11)
    expect(orders.last).to_contain_text("1.00 USD")
    expect(page.locator("#orders-more")).to_be_hidden()

    # The tabs follow the WAI-ARIA pattern: arrow keys move between them.
    page.get_by_role("tab", name="Top-up orders").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Ledger")).to_be_focused()
    expect(page.get_by_role("tab", name="Ledger")).to_have_attribute("aria-selected", "true")
    ledger = page.locator("#ledger-body tr")
    expect(ledger).to_have_count(10)
    expect(ledger.first).to_contain_text("Adjustment")
    expect(ledger.first).to_contain_text("+12,000")
    expect(ledger.first).to_contain_text(grouped(sum(n * 1000 for n in range(1, 13))))
    page.locator("#ledger-more").click()
    expect(ledger).to_have_count(12)
    expect(ledger.last).to_contain_text("+1,000")
    expect(page.locator("#ledger-more")).to_be_hidden()
    expect(page.locator("#balance-quota")).to_have_text("78,000")
    screenshot(page, "16-history-ledger")


# ---------------------------------------------------------------- retries (Idempotency-Key)


def lose_first_answer(seen: list[str | None]) -> Callable[[Route], None]:
    """A route that lets the first request reach the server but loses its answer (a gateway
    503, as when the integration times out), then lets the retries through; `seen` collects
    each request's Idempotency-Key."""

    def handle(route: Route) -> None:
        seen.append(route.request.headers.get("idempotency-key"))
        if len(seen) == 1:
            route.fetch()  # the server does it ...
            route.fulfill(status=503, json={"message": "Service Unavailable"})  # ... unheard
        else:
            route.continue_()

    return handle


def test_a_top_up_whose_answer_was_lost_is_retried_as_the_same_order(
    stack: LocalStack, page: Page, console_log: ConsoleLog
) -> None:
    console_log.expect_http(503)
    user = new_id("retrier")
    api_account(stack, user)
    seen: list[str | None] = []
    page.route("**/checkout", lose_first_answer(seen))
    sign_in(page, stack.base_url, user)
    choose_method(page, "Stripe")
    page.get_by_role("radio", name=re.compile(r"^10 ")).check()
    page.get_by_role("button", name="Top Up").click()
    page.wait_for_url(re.compile(r"/_local/sandbox/stripe/pay/"))
    assert len(seen) == 2 and seen[0] and seen[1] == seen[0]  # one submission, one key
    orders = stack.request("GET", "/topups", token=stack.token(user)).json()["items"]
    assert len(orders) == 1 and orders[0]["pay_url"] == page.url


def test_a_transfer_whose_answer_was_lost_moves_once_and_the_next_is_new(
    stack: LocalStack, page: Page, console_log: ConsoleLog
) -> None:
    console_log.expect_http(503)
    inviter = new_id("rewarded")
    code = api_account(stack, inviter)["aff_code"]
    invitee = new_id("buyer")
    api_account(stack, invitee, referral_code=code)
    api_paid_topup(stack, invitee, amount=20)  # a 10% rebate: 1,000,000 reward quota
    wait_for(
        lambda: api_get_account(stack, inviter)["aff_quota"] == 1_000_000,
        timeout=30,
        message="the referral rebate",
    )
    seen: list[str | None] = []
    page.route("**/referral/transfer", lose_first_answer(seen))
    sign_in(page, stack.base_url, inviter)
    amount = page.get_by_label("Reward quota to transfer")
    status = page.locator("#transfer-status")
    for expected_balance in ("500,000", "1,000,000"):
        amount.fill("500000")
        page.get_by_role("button", name="Transfer to Balance").click()
        expect(status).to_have_text("Moved 500,000 quota ($1.00) to your balance.")
        expect(page.locator("#balance-quota")).to_have_text(expected_balance)
        status.evaluate("node => { node.textContent = ''; }")
    # the lost answer was retried under its key; the second transfer was a new submission
    assert len(seen) == 3 and seen[0] and seen[1] == seen[0] and seen[2] not in (None, seen[0])
    account = api_get_account(stack, inviter)
    assert (account["quota"], account["aff_quota"]) == (1_000_000, 0)
    page.get_by_role("tab", name="Ledger").click()
    expect(page.locator("#ledger-body tr", has_text="Reward transfer")).to_have_count(4)


# ---------------------------------------------------------------- OIDC (the AWS sign-in)

COGNITO = "https://console-test.auth.us-east-1.amazoncognito.com"


def oidc_config(base: str) -> dict[str, Any]:
    """config.json as deployed in AWS (Cognito hosted UI), served to the page by a route."""
    return {
        "apiBaseUrl": "",
        "auth": {
            "mode": "oidc",
            "authority": COGNITO,
            "clientId": "console-client",
            "redirectUri": topup_url(base),
            "scope": "openid email profile",
        },
    }


def test_oidc_sign_in_uses_pkce_and_keeps_the_referral_code(stack: LocalStack, page: Page) -> None:
    """The authorization-code flow with PKCE against a stand-in of Cognito's hosted UI (routed
    in the browser); the id token it hands out is a real dev token the local API accepts."""
    inviter = api_account(stack, new_id("oidc-inviter"))
    user = new_id("oidc")
    config = oidc_config(stack.base_url)
    redirect_uri = config["auth"]["redirectUri"]
    seen: dict[str, dict[str, str]] = {}
    tokens: list[str] = []

    def authorize(route: Route) -> None:
        query = dict(parse_qsl(urlsplit(route.request.url).query))
        seen["authorize"] = query
        route.fulfill(
            status=302,
            headers={"Location": f"{query['redirect_uri']}?code=the-code&state={query['state']}"},
        )

    def token(route: Route) -> None:
        seen["token"] = dict(parse_qsl(route.request.post_data or ""))
        seen["token_headers"] = route.request.headers
        tokens.append(
            stack.token(
                user, email=f"{user}@example.test", claims={"nonce": seen["authorize"]["nonce"]}
            )
        )
        route.fulfill(
            json={
                "id_token": tokens[-1],
                "access_token": "unused",
                "token_type": "Bearer",
                "expires_in": 3600,
            },
            headers={"Access-Control-Allow-Origin": "*"},
        )

    def logout(route: Route) -> None:
        seen["logout"] = dict(parse_qsl(urlsplit(route.request.url).query))
        route.fulfill(status=302, headers={"Location": seen["logout"]["logout_uri"]})

    page.route("**/console/config.json", lambda route: route.fulfill(json=config))
    page.route(f"{COGNITO}/oauth2/authorize?*", authorize)
    page.route(f"{COGNITO}/oauth2/token", token)
    page.route(f"{COGNITO}/logout?*", logout)

    page.goto(topup_url(stack.base_url, f"?aff={inviter['aff_code']}"))
    expect(page.get_by_label("User ID")).to_be_hidden()  # no dev form in this mode
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#user-name")).to_have_text(f"{user}@example.test")
    expect(page.locator("#page-status")).to_have_text(
        f"Welcome! Your account was created with the referral code {inviter['aff_code']}."
    )
    assert api_get_account(stack, user)["inviter_id"] == inviter["user_id"]
    assert "code=" not in page.url and "state=" not in page.url

    asked = seen["authorize"]
    assert {
        k: asked[k]
        for k in ("response_type", "client_id", "redirect_uri", "scope", "code_challenge_method")
    } == {
        "response_type": "code",
        "client_id": "console-client",
        "redirect_uri": redirect_uri,
        "scope": "openid email profile",
        "code_challenge_method": "S256",
    }
    exchanged = seen["token"]
    assert seen["token_headers"]["content-type"].startswith("application/x-www-form-urlencoded")
    assert {k: exchanged[k] for k in ("grant_type", "code", "client_id", "redirect_uri")} == {
        "grant_type": "authorization_code",
        "code": "the-code",
        "client_id": "console-client",
        "redirect_uri": redirect_uri,
    }
    verifier = exchanged["code_verifier"]
    assert 43 <= len(verifier) <= 128
    digest = hashlib.sha256(verifier.encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == asked["code_challenge"]
    assert len(asked["state"]) >= 22 and len(asked["nonce"]) >= 22
    assert page.evaluate("sessionStorage.getItem('topup.idToken')") == tokens[-1]

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert seen["logout"] == {"client_id": "console-client", "logout_uri": redirect_uri}
    assert page.evaluate("sessionStorage.getItem('topup.idToken')") is None


def test_an_oidc_response_for_another_sign_in_is_refused(stack: LocalStack, page: Page) -> None:
    config = oidc_config(stack.base_url)
    exchanged: list[str] = []
    page.route("**/console/config.json", lambda route: route.fulfill(json=config))
    page.route(f"{COGNITO}/oauth2/token", lambda route: exchanged.append(route.request.url))

    page.goto(topup_url(stack.base_url, "?code=stolen-code&state=forged-state"))
    expect(page.locator("#signin-status")).to_have_text(
        "The sign-in response does not match this browser's sign-in; try again."
    )
    assert exchanged == []  # the code is never exchanged
    assert "code=" not in page.url
    assert page.evaluate("sessionStorage.getItem('topup.idToken')") is None


# ---------------------------------------------------------------- session, layout, a11y


def test_a_rejected_token_signs_out_with_a_message(
    stack: LocalStack, page: Page, console_log: ConsoleLog
) -> None:
    console_log.expect_http(401)
    good = stack.token(new_id("tampered"))
    header, payload, signature = good.split(".")
    forged = f"{header}.{payload}.{signature[::-1]}"
    page.add_init_script(
        f"if (!sessionStorage.getItem('seeded')) {{ sessionStorage.setItem('seeded', '1');"
        f" sessionStorage.setItem('topup.idToken', '{forged}'); }}"
    )
    page.goto(topup_url(stack.base_url))
    expect(page.locator("#signin-status")).to_have_text(
        "Your session has expired. Please sign in again."
    )
    expect(page.get_by_label("User ID")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()


def test_keyboard_only_sign_in_labels_and_contrast(stack: LocalStack, page: Page) -> None:
    page.goto(topup_url(stack.base_url))
    expect(page.get_by_label("User ID")).to_be_focused()
    page.keyboard.type(new_id("keys"))
    page.keyboard.press("Tab")
    expect(page.get_by_label("Sign in as an administrator")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Sign in")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#balance-quota")).to_have_text("0")

    # Every visible control has an accessible name (a label, aria-label or text).
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input, button, select, textarea, [role=tab]')]
            .filter((el) => el.offsetParent !== null)
            .filter((el) => {
              const labelled = (el.labels && [...el.labels].some((l) => l.textContent.trim()))
                || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby');
              const text = el.matches('button, [role=tab]') && el.textContent.trim();
              const inChoice = el.closest('label') && el.closest('label').textContent.trim();
              return !(labelled || text || inChoice);
            })
            .map((el) => el.outerHTML.slice(0, 80))"""
    )
    assert unnamed == []

    # Text contrast (WCAG AA): 4.5:1, or 3:1 for large text, against the first opaque background.
    low = page.evaluate(
        """() => {
          const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
          const lum = ([r, g, b]) => {
            const f = (v) => {
              v /= 255;
              return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
            };
            return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
          };
          const background = (el) => {
            for (let node = el; node; node = node.parentElement) {
              const style = getComputedStyle(node);
              if (style.backgroundImage !== 'none') return [255, 255, 255];
              const c = rgb(style.backgroundColor);
              if (c.length < 4 || c[3] === 1) return c.slice(0, 3);
            }
            return [255, 255, 255];
          };
          const found = [];
          for (const el of document.querySelectorAll('body *')) {
            const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
            if (!own || el.offsetParent === null || el.closest('[disabled], :disabled')) continue;
            const style = getComputedStyle(el);
            const fg = lum(rgb(style.color)), bg = lum(background(el));
            const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
            const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
            const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
            if (ratio < need) found.push(`${el.tagName}#${el.id}: ${ratio.toFixed(2)}`);
          }
          return found;
        }"""
    )
    assert low == []


def test_phone_width_layout(stack: LocalStack, new_page: Callable[..., Page]) -> None:
    page = new_page({"width": 375, "height": 812})
    sign_in(page, stack.base_url, new_id("phone"))
    choose_method(page, "EPay · Alipay")
    page.get_by_label("Amount in units").fill("3")
    expect(summary_row(page, "To pay")).to_have_text("21.90 CNY")

    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways on a phone ({width} px wide)"
    overflowing = page.evaluate(
        """() => [...document.querySelectorAll('.card, button, input, label, h1, h2, p')]
            .filter((el) => el.offsetParent !== null && !el.closest('.table-wrap'))
            .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 0.5)
            .map((el) => `${el.tagName}#${el.id}`)"""
    )
    assert overflowing == []
    # One column, in task order: balance, then the top-up form.
    balance = page.locator("#balance-card").bounding_box()
    topup = page.locator("#topup-card").bounding_box()
    assert balance is not None and topup is not None
    assert balance["y"] + balance["height"] <= topup["y"]
    button = page.get_by_role("button", name="Top Up").bounding_box()
    assert button is not None and button["width"] >= 300 and button["height"] >= 44
    screenshot(page, "17-phone")


# ---------------------------------------------------------------- money arithmetic


def test_the_page_computes_prices_exactly_as_the_server_does(stack: LocalStack, page: Page) -> None:
    """The console's money.js against Python's Decimal (the server's arithmetic)."""
    page.goto(topup_url(stack.base_url))
    rng = random.Random(20240607)
    unit_prices = ["1.00", "7.30", "0.07", "1.005", "3.333", "0.1", "149", "0.015"]
    discounts = ["1", "0.95", "0.90", "0.875", "0.333", "0.5"]
    currencies = {"USD": 2, "CNY": 2, "JPY": 0, "KWD": 3}
    cases = [
        (
            rng.randint(1, 10_000),
            rng.choice(unit_prices),
            rng.choice(discounts),
            rng.choice(list(currencies)),
        )
        for _ in range(400)
    ] + [(3, "7.30", "1", "CNY"), (1, "0.005", "1", "USD"), (1, "0.125", "1", "USD")]
    computed = page.evaluate(
        """async (cases) => {
          const money = await import('/console/js/money.js');
          return cases.map(([amount, unit, discount, currency]) =>
            money.priceFor(amount, unit, discount, currency));
        }""",
        cases,
    )
    expected = [
        str(
            (Decimal(amount) * Decimal(unit) * Decimal(discount)).quantize(
                Decimal(1).scaleb(-currencies[currency]), rounding=ROUND_HALF_UP
            )
        )
        for amount, unit, discount, currency in cases
    ]
    assert computed == expected
    assert computed[-3:] == ["21.90", "0.01", "0.13"]

    quotas = [0, 1, 2499, 2500, 5_000_000, 1_234_567, 10**15 + 3, 999_999_999]
    as_money = page.evaluate(
        """async (quotas) => {
          const money = await import('/console/js/money.js');
          return quotas.map((q) => [money.quotaToMoney(q, 500000), money.formatQuota(q)]);
        }""",
        quotas,
    )
    assert as_money == [
        [
            str((Decimal(q) / QUOTA_PER_UNIT).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)),
            grouped(q),
        ]
        for q in quotas
    ]
    assert page.evaluate(
        """async () => {
          const money = await import('/console/js/money.js');
          return [money.percentOff('0.95'), money.percentOff('0.875'), money.percentOff('1'),
                  String(money.parseWholeNumber(' 42 ')), money.parseWholeNumber('4.2'),
                  money.parseWholeNumber('1e3'), money.parseWholeNumber('-1')];
        }"""
    ) == ["5", "12.5", "0", "42", None, None, None]


# ---------------------------------------------------------------- credit grants


def test_a_promo_code_shows_as_an_expiring_grant_and_the_ledger_shows_per_grant_effects(
    stack: LocalStack, new_page: Callable[..., Page], own_ip_url: str
) -> None:
    admin_page = new_page()
    sign_in(admin_page, own_ip_url, new_id("admin"), admin=True)
    admin_page.get_by_label("Promo: quota expires after (days, optional)").fill("2")
    admin_page.get_by_label("Promo: priority (optional)").fill("10")
    [code] = generate_codes(admin_page, new_id("e2e-promo"), 1_000_000, 1)

    user = new_id("promo-user")
    api_account(stack, user)
    adjusted = stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=stack.token(new_id("admin"), admin=True),
        json={"delta": 3_000_000, "reason": "e2e grants"},
    )
    assert adjusted.status_code == 200, adjusted.text
    page = new_page()
    sign_in(page, own_ip_url, user)
    redeem_field(page).fill(code)
    page.get_by_role("button", name="Redeem").click()
    expect(page.locator("#balance-quota")).to_have_text("4,000,000")

    grants = page.locator("#grants-body tr")
    expect(grants).to_have_count(2)
    # draw order: the promo code's grant (priority 10, expiring) first, the adjustment last
    expect(grants.first).to_contain_text("Redemption code")
    expect(grants.first).to_contain_text("1,000,000")
    expect(grants.first).not_to_contain_text("Never")
    expect(grants.last).to_contain_text("Adjustment")
    expect(grants.last).to_contain_text("Never")
    expect(page.locator("#expiring-note")).to_contain_text("1,000,000 quota expires before")
    screenshot(page, "20-grants")

    charged = stack.invoke(
        "MeterUsageFunction",
        {
            "action": "charge",
            "request_id": new_id("req"),
            "user_id": user,
            "model": "gpt-4o",
            "prompt_tokens": 80,
            "completion_tokens": 0,
        },
    )
    assert charged["status"] == "charged", charged
    page.locator("#refresh-balance").click()
    expect(grants.first).to_contain_text("999,900")
    page.locator("#history-refresh").click()
    page.get_by_role("tab", name="Ledger").click()
    usage = page.locator("#ledger-body tr").first
    expect(usage).to_contain_text("Usage")
    effects = usage.locator("details.grant-effects")
    expect(effects.locator("li")).to_be_hidden()  # on demand only
    effects.locator("summary").click()
    expect(effects.locator("li")).to_have_count(1)
    expect(effects.locator("li")).to_contain_text("\u2212100")  # a real minus sign
    screenshot(page, "21-ledger-grant-effects")
