"""The console's Usage section in a real browser: the daily spend chart (30 bars, stacked by
model, a tooltip and a label with a day's exact spend), the tables by model and by key, and
the statement download (a CSV that sums to the balance). Screenshots (desktop and phone):
tests/artifacts/screenshots/usage-*.png.
"""

from __future__ import annotations

import csv
import io
import uuid
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from playwright.sync_api import Page, expect

from tests.e2e.conftest import screenshot
from tests.support.stack import LocalStack, wait_for

QUOTA_PER_UNIT = 500_000  # settings/local.json
MODELS = ("gpt-4o", "claude-3-5-sonnet")
PHONE = {"width": 390, "height": 844}


def spend(quota: int) -> str:
    money = (Decimal(quota) / QUOTA_PER_UNIT).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{quota:,} quota (${money:,})"


def user_with_usage(stack: LocalStack) -> tuple[str, dict[str, Any]]:
    user = f"usage-e2e-{uuid.uuid4().hex[:10]}"
    token = stack.token(user)
    assert stack.request("POST", "/account", token=token, json={}).status_code == 201
    adjusted = stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=stack.token("admin-usage-e2e", admin=True),
        json={"delta": 50_000_000, "reason": "e2e usage"},
    )
    assert adjusted.status_code == 200, adjusted.text
    events = [
        {
            "action": "charge",
            "request_id": f"req-{uuid.uuid4().hex}",
            "user_id": user,
            "model": MODELS[n % 2],
            "prompt_tokens": 1000 + 37 * n,
            "completion_tokens": 11 * n,
        }
        for n in range(12)
    ]
    results = stack.invoke("MeterUsageFunction", {"events": events})["results"]
    assert {r["status"] for r in results} == {"charged"}

    def caught_up() -> dict[str, Any] | None:
        answer: dict[str, Any] = stack.request("GET", "/usage/summary", token=token).json()
        return answer if answer["total"]["requests"] == 12 else None

    return user, wait_for(caught_up, timeout=60, message="the rollups")


def sign_in(page: Page, base: str, user: str) -> None:
    page.goto(f"{base}/console/topup")
    page.get_by_label("User ID").fill(user)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#user-name")).to_have_text(user)


def test_the_chart_shows_30_days_and_a_days_exact_spend(stack: LocalStack, page: Page) -> None:
    user, summary = user_with_usage(stack)
    today = summary["buckets"][-1]
    assert today["key"] == summary["to"] and today["quota"] == summary["total"]["quota"]
    sign_in(page, stack.base_url, user)

    bars = page.locator("#usage-chart .usage-bar")
    expect(bars).to_have_count(30)
    last = bars.last
    expect(last).to_have_attribute("data-day", today["key"])
    expect(last.locator("title")).to_have_text(f"{today['key']}: {spend(today['quota'])}")
    expect(last.locator(".usage-segment")).to_have_count(2)  # stacked by model
    expect(bars.first.locator(".usage-segment")).to_have_count(0)  # a day without usage
    last.hover()
    expect(page.locator("#usage-day")).to_have_text(f"{today['key']}: {spend(today['quota'])}")
    expect(page.locator("#usage-total")).to_have_text(spend(summary["total"]["quota"]))

    rows = page.locator("#usage-models-body tr")
    expect(rows).to_have_count(2)
    for model, quota in today["models"].items():
        expect(rows.filter(has_text=model)).to_contain_text(spend(quota))
    expect(page.locator("#usage-keys-body tr")).to_have_count(1)
    expect(page.locator("#usage-keys-body tr")).to_contain_text("(no key)")
    page.locator("#usage-card").scroll_into_view_if_needed()
    screenshot(page, "usage-chart")


def test_the_statement_downloads_and_sums_to_the_balance(stack: LocalStack, page: Page) -> None:
    user, _ = user_with_usage(stack)
    sign_in(page, stack.base_url, user)
    expect(page.locator("#statement-to")).not_to_have_value("")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download statement").click()
    download = info.value
    assert download.suggested_filename.endswith(".csv")
    path = download.path()
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    account = stack.request("GET", "/account", token=stack.token(user)).json()
    assert sum(int(r["delta"]) for r in rows if r["balance"] == "quota") == account["quota"]
    assert {r["kind"] for r in rows} == {"adjustment", "usage"}
    expect(page.locator("#statement-status")).to_have_text("Statement downloaded.")
    page.locator("#usage-card").scroll_into_view_if_needed()
    screenshot(page, "usage-statement-downloaded")


def test_the_usage_section_fits_a_phone(stack: LocalStack, new_page: Any) -> None:
    user, _ = user_with_usage(stack)
    phone = new_page(viewport=PHONE)
    sign_in(phone, stack.base_url, user)
    expect(phone.locator("#usage-chart .usage-bar")).to_have_count(30)
    chart = phone.locator("#usage-chart svg").bounding_box()
    assert chart is not None and chart["width"] <= PHONE["width"]
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]
    phone.locator("#usage-card").scroll_into_view_if_needed()
    screenshot(phone, "usage-phone")
