"""Expire credit grants on a schedule: write off what expired grants still hold, once each
(billing.grant_expiry), and reach the `grant.expiring` hook 3 days ahead."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from billing import grant_expiry, init_phase
from billing.events import grant_notices

if TYPE_CHECKING:
    # An annotation only: Powertools' typing module is nothing the handler runs.
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()


@logger.inject_lambda_context(clear_state=True)
def handler(event: Any, context: LambdaContext) -> dict[str, int]:
    summary = grant_expiry.sweep(on_expiring=grant_notices.notify)
    logger.info("grants swept", extra=summary)
    return summary


# INIT is over: garbage collection resumes (billing.init_phase).
init_phase.finished()
