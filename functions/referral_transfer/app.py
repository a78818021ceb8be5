"""Referral transfer function: POST /referral/transfer moves reward quota to the balance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from billing import init_phase
from billing.api_docs import BEARER, IDEMPOTENCY_409, IdempotencyKey, answers, replayable
from billing.api_models_referral import Transferred
from billing.http import RequestBody, checked, make_router, principal
from billing.idempotency import Reply, idempotent
from billing.referral import rewards as referral

if TYPE_CHECKING:
    # An annotation only: Powertools' typing module is nothing the handler runs.
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
router = make_router()


class Transfer(RequestBody):
    quota: int


@router.post(
    "/referral/transfer",
    security=BEARER,
    responses=answers(
        replayable(200, Transferred, "Moved to the balance."),
        400,
        401,
        404,
        IDEMPOTENCY_409,
        413,
    ),
)
def transfer(body: Transfer, idempotency_key: IdempotencyKey = None) -> Response[str]:
    user = principal(router)

    def move(cause: str) -> Reply:
        # The ledger entries' ids come from the cause: a retry moves the quota once, even
        # after its stored reply has expired.
        account = referral.transfer(user.user_id, body.quota, f"{user.user_id}#{cause}")
        logger.info("referral transfer", extra={"quota": body.quota})
        moved = {"aff_quota": int(account.aff_quota), "quota": int(account.quota)}
        return Reply(200, checked(Transferred, moved))

    request = body.model_dump(mode="json")
    return idempotent(router, "referral_transfer", user.user_id, request, move, idempotency_key)


@logger.inject_lambda_context(
    clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_HTTP
)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return router.resolve(event, context)


# INIT is over: garbage collection resumes (billing.init_phase).
init_phase.finished()
