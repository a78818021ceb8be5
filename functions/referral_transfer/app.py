"""Referral transfer function: POST /referral/transfer moves reward quota to the balance."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.utilities.typing import LambdaContext
from billing.errors import InvalidRequest
from billing.http import RequestBody, json_response, make_router, principal
from billing.referral import rewards as referral

logger = Logger()
router = make_router()


class Transfer(RequestBody):
    quota: int


@router.post("/referral/transfer")
def transfer(body: Transfer) -> Response[str]:
    user = principal(router)
    # A retried request with the same Idempotency-Key moves the quota once; without one,
    # each request (API Gateway's request id) is its own transfer.
    headers = router.current_event.headers or {}
    cause = headers.get("idempotency-key") or router.current_event.request_context.request_id
    if not cause or len(cause) > 128:
        raise InvalidRequest("Idempotency-Key must be 1 to 128 characters.")
    account = referral.transfer(user.user_id, body.quota, f"{user.user_id}#{cause}")
    logger.info("referral transfer", extra={"user_id": user.user_id, "quota": body.quota})
    return json_response(200, {"aff_quota": int(account.aff_quota), "quota": int(account.quota)})


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return router.resolve(event, context)
