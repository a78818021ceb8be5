"""Reconcile function (hourly schedule): recompute every balance from the ledger and every
order from its ledger entries; log each difference and emit the metric
ReconciliationDifferences (an alarm fires above zero). Read-only: it never repairs anything.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from billing import db
from billing.ops.reconciliation import Tables, reconcile

logger = Logger()
metrics = Metrics()
# Enough to act on; the rest are counted in the metric and the summary.
MAX_LOGGED = 200


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = reconcile(db.connection().client, Tables.from_environment())
    metrics.add_metric(
        name="ReconciliationDifferences", unit=MetricUnit.Count, value=len(report.differences)
    )
    for difference in report.differences[:MAX_LOGGED]:
        logger.error("reconciliation difference", extra=difference.as_log())
    summary = {
        "clean": report.clean,
        "differences": len(report.differences),
        "counts": report.counts,
        "rechecked": report.rechecked,
    }
    logger.info("reconciliation done", extra=summary)
    return {**summary, "sample": [d.as_dict() for d in report.differences[:20]]}
