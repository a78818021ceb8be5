"""Business metrics, as an operator sees them: the functions publish EMF lines, the local stack
sums them (GET /_local/metrics) as CloudWatch would. Other tests share the session's stack,
so each check compares a series before and after (the suite runs tests one at a time)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.support.metering import funded_user, invoke, usage_event
from tests.support.payments import (
    checkout,
    new_user,
    post_webhook,
    session_event,
    sign,
    wait_drained,
    wait_status,
)
from tests.support.stack import LocalStack, wait_for


def settled(stack: LocalStack, name: str, **dimensions: str) -> float:
    """The series' sum once the functions' output has stopped adding to it (output is pumped
    from the workers asynchronously)."""
    last = stack.metric_sum(name, **dimensions)
    while True:
        time.sleep(0.5)
        now = stack.metric_sum(name, **dimensions)
        if now == last:
            return now
        last = now


def test_a_credited_top_up_counts_once_with_its_quota(stack: LocalStack) -> None:
    credited_before = settled(stack, "TopupsCredited", provider="stripe")
    quota_before = settled(stack, "TopupQuotaCredited", provider="stripe")
    _, token = new_user(stack)
    order = checkout(stack, token, amount=10)
    body = session_event(order)
    for _ in range(3):  # the provider retries: one credit, one count
        assert post_webhook(stack, body, sign(body)).status_code == 200
    wait_status(stack, token, order["order_id"], "paid")
    wait_drained(stack)
    wait_for(
        lambda: stack.metric_sum("TopupsCredited", provider="stripe") > credited_before,
        message="TopupsCredited to move",
    )
    assert settled(stack, "TopupsCredited", provider="stripe") == credited_before + 1
    assert settled(stack, "TopupQuotaCredited", provider="stripe") == quota_before + order["quota"]
    series = stack.metrics("TopupsCredited")
    assert any(
        row["dimensions"] == {"provider": "stripe", "service": "credit_payment"}
        and row["namespace"] == "QuotaTopup"
        and row["unit"] == "Count"
        for row in series
    ), series


def test_a_forged_webhook_counts_as_refused(stack: LocalStack) -> None:
    before = settled(stack, "WebhooksRefused", provider="stripe", reason="signature")
    _, token = new_user(stack)
    order = checkout(stack, token)
    body = session_event(order)
    forged = f"t={int(time.time())},v1={'0' * 64}"
    assert post_webhook(stack, body, forged).status_code == 400
    assert post_webhook(stack, body, None).status_code == 400
    wait_for(
        lambda: (
            stack.metric_sum("WebhooksRefused", provider="stripe", reason="signature") >= before + 2
        ),
        message="WebhooksRefused to move",
    )
    assert settled(stack, "WebhooksRefused", provider="stripe", reason="signature") == before + 2


def test_the_metrics_endpoint_refuses_unknown_parameters(stack: LocalStack) -> None:
    response = stack.http.get(f"{stack.base_url}/_local/metrics?nme=x", timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_usage_counts_what_was_billed_and_what_was_rejected(stack: LocalStack) -> None:
    charged_before = settled(stack, "UsageEventsCharged")
    quota_before = settled(stack, "UsageQuotaCharged")
    unknown_before = settled(stack, "UsageEventsRejected", error="unknown_model")
    user = funded_user(stack, 10_000_000)
    charge = usage_event(user)
    result = invoke(stack, charge)
    assert result["status"] == "charged", result
    assert invoke(stack, charge)["status"] == "duplicate"  # not billed twice
    refused = invoke(stack, usage_event(user, model="no-such-model"))
    assert refused["error"] == "unknown_model", refused
    wait_for(
        lambda: stack.metric_sum("UsageEventsRejected", error="unknown_model") > unknown_before,
        message="UsageEventsRejected to move",
    )
    assert settled(stack, "UsageEventsCharged") == charged_before + 1
    assert settled(stack, "UsageQuotaCharged") == quota_before + result["quota"]
    assert settled(stack, "UsageEventsRejected", error="unknown_model") == unknown_before + 1


def test_charges_racing_for_one_account_count_their_contention_retries(
    stack: LocalStack,
) -> None:
    """Concurrent charges of one account conflict on its version; each lost race that is
    retried counts as LedgerContentionRetries, and every charge still lands once."""
    before = settled(stack, "LedgerContentionRetries")
    user = funded_user(stack, 10_000_000)
    events = [usage_event(user) for _ in range(24)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda event: invoke(stack, event), events))
    assert [r["status"] for r in results] == ["charged"] * len(events), results
    wait_for(
        lambda: stack.metric_sum("LedgerContentionRetries") > before,
        message="LedgerContentionRetries to move",
    )
