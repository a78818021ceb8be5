"""Referral transfer function: POST /referral/transfer moves reward quota to the balance."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.utilities.typing import LambdaContext
from billing.http import RequestBody, make_router, principal
from billing.idempotency import Reply, idempotent
from billing.referral import rewards as referral

logger = Logger()
router = make_router()


class Transfer(RequestBody):
    quota: int


@router.post("/referral/transfer")
def transfer(body: Transfer) -> Response[str]:
    user = principal(router)

    def move(cause: str) -> Reply:
        # The ledger entries' ids come from the cause: a retry moves the quota once, even
        # after its stored reply has expired.
        account = referral.transfer(user.user_id, body.quota, f"{user.user_id}#{cause}")
        logger.info("referral transfer", extra={"user_id": user.user_id, "quota": body.quota})
        return Reply(200, {"aff_quota": int(account.aff_quota), "quota": int(account.quota)})

    return idempotent(router, "referral_transfer", user.user_id, body.model_dump(mode="json"), move)


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return router.resolve(event, context)
