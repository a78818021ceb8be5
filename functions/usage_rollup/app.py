"""Usage rollups: the usage table's DynamoDB stream → totals per (user, day, model, key).

The whole batch is folded at once (records of one rollup item share one write), so this does
not go record by record through Powertools' batch processor; the records that could not be
written are reported as batch item failures (the stream retries from the first of them, and
the per-request markers make the retry count nothing twice).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from billing import init_phase
from billing.usage import rollups

if TYPE_CHECKING:
    # An annotation only: Powertools' typing module is nothing the handler runs.
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records") or []
    failed = rollups.apply_stream_records(records)
    if failed:
        logger.warning(
            "usage rollup records left for the stream's retry",
            extra={"failed": len(failed), "records": len(records)},
        )
    return {"batchItemFailures": [{"itemIdentifier": sequence} for sequence in failed]}


# INIT is over: garbage collection resumes (billing.init_phase).
init_phase.finished()
