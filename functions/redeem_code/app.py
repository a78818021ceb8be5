"""Redeem function: POST /redeem."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from billing import init_phase
from billing.api_docs import BEARER, answers, ok
from billing.api_models_redemption import Redeemed
from billing.codes import redemption
from billing.errors import RedeemFailed
from billing.http import RequestBody, make_router, model_response, principal
from pydantic import Field

if TYPE_CHECKING:
    # An annotation only: Powertools' typing module is nothing the handler runs.
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
# A code that is not even a string of sane length fails like any other code.
router = make_router(field_codes={"code": RedeemFailed()})


class Redeem(RequestBody):
    code: str = Field(min_length=1, max_length=64)


@router.post(
    "/redeem",
    security=BEARER,
    responses=answers(ok(200, Redeemed, "The code's quota was added."), 400, 401, 404, 413, 429),
)
def redeem(body: Redeem) -> Response[str]:
    user = principal(router)
    http = (router.current_event.raw_event.get("requestContext") or {}).get("http") or {}
    result = redemption.redeem(user.user_id, body.code, str(http.get("sourceIp") or ""))
    return model_response(200, Redeemed, {"quota_added": result.quota_added, "quota": result.quota})


@logger.inject_lambda_context(
    clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_HTTP
)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return router.resolve(event, context)


# INIT is over: garbage collection resumes (billing.init_phase).
init_phase.finished()
