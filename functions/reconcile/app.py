"""Reconcile function (hourly schedule): every balance against its ledger, every order against
its ledger entries, every code against its redemptions (billing.ops.reconciliation, streamed
per account). Logs each difference and emits the metric ReconciliationDifferences (an alarm
fires above zero). Read-only: it never repairs anything.

The run stops before the function's Timeout; a run that could not finish fails (the
function's Errors alarm), so an unchecked part never passes for a clean one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from billing import init_phase
from billing.ops.reconciliation import Options, Tables, reconcile

if TYPE_CHECKING:
    # An annotation only: Powertools' typing module is nothing the handler runs.
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
metrics = Metrics()
# Enough to act on; the rest are counted in the metric and the summary.
MAX_LOGGED = 200
# Seconds of the Timeout kept for logging and flushing the metric after the run stops.
RESERVE_SECONDS = 30


class ReconciliationIncomplete(RuntimeError):
    """The run reached its deadline before every pass and re-check was done."""


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - RESERVE_SECONDS
    report = reconcile(Tables.from_environment(), Options(deadline=deadline))
    metrics.add_metric(
        name="ReconciliationDifferences", unit=MetricUnit.Count, value=len(report.differences)
    )
    for difference in report.differences[:MAX_LOGGED]:
        logger.error("reconciliation difference", extra=difference.as_log())
    for unsettled in report.unverified[:MAX_LOGGED]:
        logger.warning("reconciliation unverified", extra=unsettled.as_log())
    summary = {
        "clean": report.clean,
        "complete": report.complete,
        "differences": len(report.differences),
        "unverified": len(report.unverified),
        "counts": report.counts,
        "rechecked": report.rechecked,
    }
    if not report.complete:
        logger.error("reconciliation incomplete", extra={**summary, "stopped": report.stopped})
        raise ReconciliationIncomplete(f"the run stopped in its {report.stopped} pass")
    logger.info("reconciliation done", extra=summary)
    return {**summary, "sample": [d.as_dict() for d in report.differences[:20]]}


# INIT is over: garbage collection resumes (billing.init_phase).
init_phase.finished()
