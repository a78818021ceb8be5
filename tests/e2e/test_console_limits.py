"""The console's Spend limits card in Debian's Chromium (Playwright) against the local stack:
limits set, changed and removed through the page; usage charged through the metering
function's Invoke API with a key_id; after a reload each bar and spent figure are the
server's (GET /limits), a reached limit is marked. Bad input shows a field error and writes
nothing; a refusal of the server is shown. Screenshots: tests/artifacts/screenshots/limits-*.

Prices (settings/local.json): gpt-4o, `prompt_tokens=80` costs 100 quota.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Locator, Page, Request, expect

from tests.e2e.conftest import ConsoleLog, screenshot
from tests.e2e.test_console import new_id, sign_in
from tests.support.metering import funded_user, invoke, usage_event
from tests.support.stack import LocalStack


def server_limits(stack: LocalStack, user: str) -> dict[str, dict[str, Any]]:
    response = stack.request("GET", "/limits", token=stack.token(user))
    assert response.status_code == 200, response.text
    return {limit["scope"]: limit for limit in response.json()["limits"]}


def limit_item(page: Page, scope: str) -> Locator:
    return page.locator(f'#limits-list li[data-scope="{scope}"]')


def set_limit(page: Page, *, key: str | None, period: str, max_quota: str) -> None:
    if key is None:
        page.get_by_label("Whole account", exact=True).check()
    else:
        page.get_by_label("One API key", exact=True).check()
        page.get_by_label("API key ID", exact=True).fill(key)
    page.get_by_label("Period", exact=True).select_option(period)
    page.get_by_label("Maximum spend (quota)").fill(max_quota)
    page.get_by_role("button", name="Save limit").click()


def assert_bar_is_the_servers(page: Page, limit: dict[str, Any]) -> None:
    item = limit_item(page, limit["scope"])
    bar = item.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuemax", str(limit["max_quota"]))
    expect(bar).to_have_attribute("aria-valuenow", str(min(limit["spent"], limit["max_quota"])))
    expect(bar).to_have_attribute("data-spent", str(limit["spent"]))
    expect(item.locator(".limit-spent-figure")).to_have_text(f"{limit['spent']:,}")


def test_set_limits_see_the_windows_spend_change_and_remove_them(
    stack: LocalStack, page: Page
) -> None:
    user = funded_user(stack, 1_000_000)
    key = new_id("ci-bot")
    sign_in(page, stack.base_url, user)
    expect(page.locator("#limits-empty")).to_be_visible()

    set_limit(page, key=key, period="day", max_quota="200")
    expect(page.locator("#limit-form-status")).to_have_text(
        f"API key {key}: at most 200 quota per day."
    )
    set_limit(page, key=None, period="month", max_quota="1000")
    expect(page.locator("#limit-form-status")).to_contain_text("Whole account: at most 1,000")
    expect(page.locator("#limits-list > li")).to_have_count(2)
    expect(page.locator("#limits-list .limit-scope")).to_have_text(
        ["Whole account", f"API key {key}"]
    )
    stored = server_limits(stack, user)
    assert {s: (lim["max_quota"], lim["period"]) for s, lim in stored.items()} == {
        "account": (1000, "month"),
        f"key:{key}": (200, "day"),
    }

    # Two keyed charges fill the key's day (100% of 200); a third is over it; unkeyed usage
    # counts in the account's month only.
    assert [invoke(stack, usage_event(user, key_id=key))["status"] for _ in range(2)] == [
        "charged",
        "charged",
    ]
    over = invoke(stack, usage_event(user, key_id=key))
    assert (over["status"], over["error"]) == ("rejected", "limit_exceeded")
    assert invoke(stack, usage_event(user))["status"] == "charged"

    page.reload()
    expect(page.locator("#limits-list > li")).to_have_count(2)
    spent = server_limits(stack, user)
    assert (spent[f"key:{key}"]["spent"], spent["account"]["spent"]) == (200, 300)
    for limit in spent.values():
        assert_bar_is_the_servers(page, limit)
    key_item = limit_item(page, f"key:{key}")
    expect(key_item.get_by_role("progressbar")).to_have_class("limit-bar reached")
    expect(key_item.get_by_text("Limit reached")).to_be_visible()
    account_item = limit_item(page, "account")
    expect(account_item.get_by_role("progressbar")).to_have_class("limit-bar")
    expect(account_item.get_by_text("Limit reached")).to_have_count(0)
    screenshot(page, "limits-01-key-limit-reached")

    # Change the key's limit: the window's spend stays, the bar is no longer full.
    key_item.get_by_role("button", name="Change").click()
    expect(page.get_by_label("API key ID", exact=True)).to_have_value(key)
    expect(page.get_by_label("Maximum spend (quota)")).to_have_value("200")
    page.get_by_label("Maximum spend (quota)").fill("400")
    page.get_by_role("button", name="Save limit").click()
    expect(page.locator("#limit-form-status")).to_contain_text("at most 400 quota per day")
    changed = server_limits(stack, user)[f"key:{key}"]
    assert (changed["max_quota"], changed["spent"]) == (400, 200)
    assert_bar_is_the_servers(page, changed)
    expect(limit_item(page, f"key:{key}").get_by_text("Limit reached")).to_have_count(0)

    # Remove the account limit.
    limit_item(page, "account").get_by_role("button", name="Remove").click()
    expect(page.locator("#limits-status")).to_have_text("Limit removed: Whole account.")
    expect(page.locator("#limits-list > li")).to_have_count(1)
    assert set(server_limits(stack, user)) == {f"key:{key}"}
    page.reload()
    expect(page.locator("#limits-list .limit-scope")).to_have_text([f"API key {key}"])


@pytest.mark.parametrize(
    ("key", "max_quota", "field", "message"),
    [
        (None, "1.5", "#limit-max-error", "whole number"),
        (None, "-3", "#limit-max-error", "whole number"),
        (None, "", "#limit-max-error", "whole number"),
        (None, "1000000000000000001", "#limit-max-error", "At most 1,000,000,000,000,000,000"),
        ("has space", "100", "#limit-key-error", "1 to 128 letters"),
        ("", "100", "#limit-key-error", "Enter the ID"),
    ],
)
def test_bad_input_shows_a_field_error_and_writes_nothing(
    stack: LocalStack,
    page: Page,
    key: str | None,
    max_quota: str,
    field: str,
    message: str,
) -> None:
    user = funded_user(stack, 1_000_000)
    existing = stack.request(
        "PUT",
        "/limits/account",
        token=stack.token(user),
        json={"max_quota": 5000, "period": "week"},
    )
    assert existing.status_code == 200, existing.text
    before = server_limits(stack, user)
    sign_in(page, stack.base_url, user)
    expect(page.locator("#limits-list > li")).to_have_count(1)
    sent: list[str] = []

    def record(request: Request) -> None:
        if "/limits" in request.url and request.method != "GET":
            sent.append(f"{request.method} {request.url}")

    page.on("request", record)
    set_limit(page, key=key, period="day", max_quota=max_quota)
    error = page.locator(field)
    expect(error).to_be_visible()
    expect(error).to_contain_text(message)
    described = page.locator("#limit-max" if field == "#limit-max-error" else "#limit-key")
    expect(described).to_have_attribute("aria-invalid", "true")
    expect(described).to_be_focused()
    assert sent == []
    assert server_limits(stack, user) == before


def test_exact_large_limits_and_a_refusal_of_the_server(
    stack: LocalStack, page: Page, console_log: ConsoleLog
) -> None:
    user = funded_user(stack, 1_000_000)
    sign_in(page, stack.base_url, user)
    # A limit past 2^53 that a double cannot hold (it would round to 10^18): sent and shown
    # exactly.
    set_limit(page, key=None, period="total", max_quota="999999999999999999")
    expect(page.locator("#limit-form-status")).to_contain_text(
        "at most 999,999,999,999,999,999 quota in total"
    )
    assert server_limits(stack, user)["account"]["max_quota"] == 10**18 - 1
    expect(limit_item(page, "account").get_by_role("progressbar")).to_have_attribute(
        "aria-valuemax", "999999999999999999"
    )

    # An account has at most 50 limits: the 51st is the server's 400, shown on the page.
    token = stack.token(user)
    for number in range(49):
        response = stack.request(
            "PUT", f"/limits/key:k{number}", token=token, json={"max_quota": 1, "period": "day"}
        )
        assert response.status_code == 200, response.text
    before = server_limits(stack, user)
    assert len(before) == 50
    console_log.expect_http(400)
    set_limit(page, key="one-too-many", period="day", max_quota="10")
    expect(page.locator("#limit-form-status")).to_have_text("An account has at most 50 limits.")
    expect(page.locator("#limit-form-status")).to_have_attribute("data-kind", "error")
    assert server_limits(stack, user) == before
