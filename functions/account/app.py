"""Account function: POST /account, GET /account, GET /ledger, GET /usage."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.utilities.typing import LambdaContext
from billing import accounts
from billing.http import RequestBody, json_response, make_router, page_params, principal
from billing.referral import signup
from billing.usage import history

logger = Logger()
router = make_router()


class CreateAccount(RequestBody):
    # No length limit here: a code too long to exist is an unknown code (400
    # invalid_referral_code for a new account, ignored for an existing one), as API.md says.
    referral_code: str | None = None


@router.post("/account")
def create_account(body: CreateAccount | None = None) -> Response[str]:
    user = principal(router)
    account, created = signup.create_account(user.user_id, body.referral_code if body else None)
    if created:
        logger.info(
            "account created", extra={"user_id": user.user_id, "invited": bool(account.inviter_id)}
        )
    return json_response(201 if created else 200, accounts.render_account(account))


@router.get("/account")
def get_account() -> Response[str]:
    user = principal(router)
    return json_response(200, accounts.render_account(accounts.get_account(user.user_id)))


@router.get("/ledger")
def list_ledger() -> Response[str]:
    user = principal(router)
    page = page_params(router, "ledger", user.user_id)
    return json_response(
        200, page.seal(accounts.list_ledger(user.user_id, page.limit, page.cursor))
    )


@router.get("/usage")
def list_usage() -> Response[str]:
    user = principal(router)
    page = page_params(router, "usage", user.user_id)
    return json_response(200, page.seal(history.list_usage(user.user_id, page.limit, page.cursor)))


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return router.resolve(event, context)
