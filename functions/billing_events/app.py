"""Billing events function: the ledger table's stream → billing events on the EventBridge bus
(and auto top-up), exactly once per cause. Partial batch failures retry from the first record
of a user that failed; a batch given up goes to the OnFailure DLQ (alarm)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from billing import init_phase
from billing.events import process_batch

if TYPE_CHECKING:
    # An annotation only: Powertools' typing module is nothing the handler runs.
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    failed = process_batch(event.get("Records") or [])
    return {"batchItemFailures": [{"itemIdentifier": number} for number in failed]}


# INIT is over: garbage collection resumes (billing.init_phase).
init_phase.finished()
