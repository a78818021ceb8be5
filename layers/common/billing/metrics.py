"""Business metrics, published as CloudWatch Embedded Metric Format lines (Powertools).

Each call writes one EMF document to the function's log at once (no handler decorator, so
every function and every code path can count), in the namespace the template sets
(POWERTOOLS_METRICS_NAMESPACE) with the function's service as a dimension. A metric never
decides an outcome: if it cannot be written, the money path goes on and a warning is logged.

The names are the operator's vocabulary (the dashboard and alarms in infra/template.yaml use
them): keep them stable.
"""

from __future__ import annotations

from enum import StrEnum

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit, single_metric

logger = Logger(child=True)


class Metric(StrEnum):
    TOPUPS_CREDITED = "TopupsCredited"
    TOPUP_QUOTA_CREDITED = "TopupQuotaCredited"
    WEBHOOKS_REFUSED = "WebhooksRefused"
    PAYMENT_EVENTS_UNMATCHED = "PaymentEventsUnmatched"
    PAYMENTS_ON_CLOSED_ORDERS = "PaymentsOnClosedOrders"
    ORDERS_DISPUTED = "OrdersDisputed"
    REFUNDS_REVERSED = "RefundsReversed"
    CODES_REDEEMED = "CodesRedeemed"
    CODES_REFUSED = "CodesRefused"
    USAGE_EVENTS_CHARGED = "UsageEventsCharged"
    USAGE_QUOTA_CHARGED = "UsageQuotaCharged"
    USAGE_EVENTS_REJECTED = "UsageEventsRejected"
    LEDGER_CONTENTION_RETRIES = "LedgerContentionRetries"
    GRANT_NOTICES_FAILED = "GrantNoticesFailed"
    RESPONSE_SCHEMA_MISMATCH = "ResponseSchemaMismatch"


def count(metric: Metric, value: int = 1, **dimensions: str) -> None:
    """Add `value` to `metric` under these dimensions (plus the function's service)."""
    if value <= 0:
        return
    try:
        with single_metric(name=str(metric), unit=MetricUnit.Count, value=value) as emitted:
            for name, dimension in dimensions.items():
                emitted.add_dimension(name=name, value=dimension or "none")
    except Exception:  # a metric must never decide whether money moves
        logger.warning("metric not emitted", extra={"metric": str(metric)})
