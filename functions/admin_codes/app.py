"""Admin codes function: POST /admin/redemption-codes, GET /admin/redemption-codes and DELETE
/admin/redemption-codes/{code_id}. Of the admin functions only this one holds the codes table
and the code hash key, and only it imports code administration. Non-admins are refused (403)
before routing or body validation; the route module checks the admin group again (defence
in depth)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import routes_codes
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import correlation_paths
from billing import init_phase
from billing.http import make_router, resolve_admin

if TYPE_CHECKING:
    # An annotation only: Powertools' typing module is nothing the handler runs.
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
router = make_router()
router.include_router(routes_codes.router)


@logger.inject_lambda_context(
    clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_HTTP
)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return resolve_admin(router, event, context)


# INIT is over: garbage collection resumes (billing.init_phase).
init_phase.finished()
