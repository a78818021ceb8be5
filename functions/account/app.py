"""Account function: POST /account, GET /account, GET /ledger, GET /usage, GET /grants, the
usage insight routes GET /usage/summary and GET /ledger/export, the alert and auto top-up
settings (routes_alerts) and the spend limits (routes_limits)."""

from __future__ import annotations

from typing import Any

import routes_alerts
import routes_limits
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from billing import accounts, grant_history
from billing.errors import InvalidAmount
from billing.http import (
    RequestBody,
    json_response,
    make_router,
    page_params,
    principal,
    query_params,
)
from billing.ops import statement
from billing.referral import signup
from billing.usage import history, summary

logger = Logger()
router = make_router(field_codes={"amount": InvalidAmount()})
router.include_router(routes_alerts.router)
router.include_router(routes_limits.router)


class CreateAccount(RequestBody):
    # No length limit here: a code too long to exist is an unknown code (400
    # invalid_referral_code for a new account, ignored for an existing one), as API.md says.
    referral_code: str | None = None


@router.post("/account")
def create_account(body: CreateAccount | None = None) -> Response[str]:
    user = principal(router)
    account, created = signup.create_account(user.user_id, body.referral_code if body else None)
    if created:
        logger.info("account created", extra={"invited": bool(account.inviter_id)})
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
    filters = history.parse_filters(
        query_params(router, "from", "to", "model", "key_id", "limit", "cursor")
    )
    # A cursor is sealed for its filters too: the next page of another filter is refused.
    page = page_params(router, "usage" + filters.fingerprint(), user.user_id)
    return json_response(
        200, page.seal(history.list_usage(user.user_id, page.limit, page.cursor, filters))
    )


@router.get("/grants")
def list_grants() -> Response[str]:
    user = principal(router)
    page = page_params(router, "grants", user.user_id)
    account = accounts.get_account(user.user_id)
    return json_response(
        200, page.seal(grant_history.list_grants(account, page.limit, page.cursor))
    )


@router.get("/usage/summary")
def usage_summary() -> Response[str]:
    user = principal(router)
    return json_response(
        200, summary.usage_summary(user.user_id, query_params(router, "from", "to", "group_by"))
    )


@router.get("/ledger/export")
def export_ledger() -> Response[str]:
    user = principal(router)
    body, span = statement.statement_csv(user.user_id, query_params(router, "from", "to"))
    name = statement.filename(user.user_id, span)
    return Response(
        status_code=200,
        content_type="text/csv; charset=utf-8",
        body=body,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@logger.inject_lambda_context(
    clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_HTTP
)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return router.resolve(event, context)
