"""Admin function: every /admin route; each route module checks the admin group first."""

from __future__ import annotations

from typing import Any

import routes_accounts
import routes_codes
import routes_topups
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from billing.http import make_router

logger = Logger()
router = make_router()
router.include_router(routes_accounts.router)
router.include_router(routes_codes.router)
router.include_router(routes_topups.router)


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return router.resolve(event, context)
