"""The console's low-balance alert and auto top-up, in Debian's Chromium (Playwright) against
the local stack: set a threshold and see the banner; save a card at top-up, enable auto
top-up, spend under the threshold through the Invoke API and see the balance refilled; a
declined card shows as the last failure. Screenshots: tests/artifacts/screenshots/."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot
from tests.e2e.test_console import api_account, api_paid_topup, choose_method, new_id, sign_in
from tests.support.billing_events import charge
from tests.support.stack import LocalStack, wait_for


def refreshed_balance(page: Page, expected: str) -> bool:
    page.locator("#refresh-balance").click()
    page.wait_for_timeout(300)
    return page.locator("#balance-quota").inner_text() == expected


def test_a_threshold_above_the_balance_shows_the_banner(stack: LocalStack, page: Page) -> None:
    user = new_id("alerts")
    api_account(stack, user)
    api_paid_topup(stack, user, 10)  # 5,000,000 quota
    sign_in(page, stack.base_url, user)
    banner = page.locator("#low-balance-banner")
    expect(banner).to_be_hidden()

    page.get_by_label("Warn me when my balance is below (quota)").fill("6000000")
    page.get_by_role("button", name="Save alert").click()
    expect(page.locator("#alert-status")).to_contain_text("6,000,000 quota")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("below your alert of 6,000,000 quota")
    screenshot(page, "alerts-01-low-balance-banner")

    page.reload()
    expect(page.locator("#low-balance-banner")).to_be_visible()  # kept by the server
    page.get_by_label("Warn me when my balance is below (quota)").fill("1000")
    page.get_by_role("button", name="Save alert").click()
    expect(page.locator("#alert-status")).to_contain_text("1,000 quota")
    expect(page.locator("#low-balance-banner")).to_be_hidden()

    page.get_by_label("Warn me when my balance is below (quota)").fill("1.5")
    page.get_by_role("button", name="Save alert").click()
    expect(page.locator("#alert-threshold-error")).to_be_visible()


def test_save_a_card_enable_auto_topup_and_see_the_balance_refilled(
    stack: LocalStack, page: Page
) -> None:
    user = new_id("auto")
    sign_in(page, stack.base_url, user)
    expect(page.locator("#autotopup-card")).to_contain_text("None yet")

    choose_method(page, "Stripe")
    page.get_by_role("radio", name=re.compile(r"^10 ")).check()
    page.get_by_label("Save this card for auto top-up").check()
    page.get_by_role("button", name="Top Up").click()
    page.wait_for_url(re.compile(r"/_local/sandbox/stripe/pay/"))
    page.get_by_role("button", name="Pay").click()
    page.wait_for_url(re.compile(r"/console/topup"))
    expect(page.locator("#balance-quota")).to_have_text("5,000,000")
    expect(page.locator("#autotopup-card")).to_have_text("visa •••• 4242")

    page.get_by_label("Top up automatically with my saved card").check()
    page.get_by_label("When my balance falls below (quota)").fill("4900000")
    page.get_by_label("Buy (units)").fill("10")
    page.get_by_label("At most, per day").fill("2")
    page.get_by_role("button", name="Save auto top-up").click()
    expect(page.locator("#autotopup-status")).to_have_text("Auto top-up is on.")
    expect(page.locator("#autotopup-state")).to_have_text("On")
    screenshot(page, "alerts-02-auto-topup-on")

    for _ in range(6):  # 6 x 20,000: 4,880,000, under the threshold
        assert charge(stack, user)["status"] == "charged"
    wait_for(
        lambda: refreshed_balance(page, "9,880,000"),
        timeout=40,
        message="the balance refilled by the auto top-up",
    )
    expect(page.locator("#autotopup-success-row")).to_be_visible()
    screenshot(page, "alerts-03-refilled")


def test_a_declined_card_shows_the_last_failure(stack: LocalStack, page: Page) -> None:
    user = new_id("declined")
    sign_in(page, stack.base_url, user)
    choose_method(page, "Stripe")
    page.get_by_role("radio", name=re.compile(r"^10 ")).check()
    page.get_by_label("Save this card for auto top-up").check()
    page.get_by_role("button", name="Top Up").click()
    page.wait_for_url(re.compile(r"/_local/sandbox/stripe/pay/"))
    page.get_by_role("button", name="Pay").click()
    page.wait_for_url(re.compile(r"/console/topup"))
    expect(page.locator("#autotopup-card")).to_have_text("visa •••• 4242")
    response = stack.http.post(
        f"{stack.base_url}/_local/sandbox/cards/{user}", json={"behaviour": "decline"}, timeout=10
    )
    assert response.status_code == 200

    page.get_by_label("Top up automatically with my saved card").check()
    page.get_by_label("When my balance falls below (quota)").fill("5000000")
    page.get_by_label("Buy (units)").fill("10")
    page.get_by_role("button", name="Save auto top-up").click()
    expect(page.locator("#autotopup-state")).to_have_text("On")
    assert charge(stack, user)["status"] == "charged"

    def failure_shown() -> bool:
        page.locator("#refresh-balance").click()
        page.wait_for_timeout(300)
        return page.locator("#autotopup-failure-row").is_visible()

    wait_for(failure_shown, timeout=40, message="the failure on the page")
    expect(page.locator("#autotopup-failure")).to_contain_text("the card was declined (1 in a row)")
    expect(page.locator("#balance-quota")).to_have_text("4,980,000")
    screenshot(page, "alerts-04-declined")
