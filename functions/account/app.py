"""Account function: POST /account, GET /account, GET /ledger, GET /usage, GET /grants, the
usage insight routes GET /usage/summary and GET /ledger/export, the alert and auto top-up
settings (routes_alerts) and the spend limits (routes_limits)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import routes_alerts
import routes_limits
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from billing import account_view, accounts, grant_history, init_phase
from billing.api_docs import (
    BEARER,
    CSV,
    DEFAULT_LIMIT,
    Cursor,
    FromDay,
    FromTime,
    GroupBy,
    KeyId,
    Limit,
    ModelName,
    ToDay,
    ToTime,
    answers,
    ok,
    present,
    text,
)
from billing.api_models_accounts import Account
from billing.api_models_ledger import GrantPage, LedgerPage
from billing.api_models_usage import UsagePage, UsageSummary
from billing.errors import InvalidAmount
from billing.http import (
    RequestBody,
    make_router,
    model_response,
    open_page,
    principal,
    query_params,
)
from billing.ops import statement
from billing.referral import signup
from billing.usage import history, summary

if TYPE_CHECKING:
    # An annotation only: Powertools' typing module is nothing the handler runs.
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
router = make_router(field_codes={"amount": InvalidAmount()})
router.include_router(routes_alerts.router)
router.include_router(routes_limits.router)


class CreateAccount(RequestBody):
    # No length limit here: a code too long to exist is an unknown code (400
    # invalid_referral_code for a new account, ignored for an existing one), as API.md says.
    referral_code: str | None = None


@router.post(
    "/account",
    security=BEARER,
    responses=answers(
        ok(201, Account, "Account created."),
        ok(200, Account, "The existing account (referral_code ignored)."),
        400,
        401,
        413,
    ),
)
def create_account(body: CreateAccount | None = None) -> Response[str]:
    user = principal(router)
    account, created = signup.create_account(user.user_id, body.referral_code if body else None)
    if created:
        logger.info("account created", extra={"invited": bool(account.inviter_id)})
    return model_response(201 if created else 200, Account, account_view.render_account(account))


@router.get(
    "/account", security=BEARER, responses=answers(ok(200, Account, "The account."), 401, 404)
)
def get_account() -> Response[str]:
    user = principal(router)
    account = accounts.get_account(user.user_id)
    return model_response(200, Account, account_view.render_account(account))


@router.get(
    "/ledger",
    security=BEARER,
    responses=answers(ok(200, LedgerPage, "Ledger entries, newest first."), 400, 401),
)
def list_ledger(limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> Response[str]:
    user = principal(router)
    page = open_page("ledger", user.user_id, limit, cursor)
    return model_response(
        200, LedgerPage, page.seal(accounts.list_ledger(user.user_id, page.limit, page.cursor))
    )


@router.get(
    "/usage",
    security=BEARER,
    responses=answers(ok(200, UsagePage, "Usage records, newest first."), 400, 401),
)
def list_usage(
    from_: FromTime = None,
    to: ToTime = None,
    model: ModelName = None,
    key_id: KeyId = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> Response[str]:
    user = principal(router)
    query_params(router, "from", "to", "model", "key_id", "limit", "cursor")  # no other
    filters = history.parse_filters(
        present({"from": from_, "to": to, "model": model, "key_id": key_id})
    )
    # A cursor is sealed for its filters too: the next page of another filter is refused.
    page = open_page("usage" + filters.fingerprint(), user.user_id, limit, cursor)
    return model_response(
        200,
        UsagePage,
        page.seal(history.list_usage(user.user_id, page.limit, page.cursor, filters)),
    )


@router.get(
    "/grants",
    security=BEARER,
    responses=answers(ok(200, GrantPage, "Credit grants, newest first."), 400, 401, 404),
)
def list_grants(limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> Response[str]:
    user = principal(router)
    page = open_page("grants", user.user_id, limit, cursor)
    account = accounts.get_account(user.user_id)
    return model_response(
        200, GrantPage, page.seal(grant_history.list_grants(account, page.limit, page.cursor))
    )


@router.get(
    "/usage/summary",
    security=BEARER,
    responses=answers(
        ok(200, UsageSummary, "Usage by day, model or key, from the rollups."), 400, 401
    ),
)
def usage_summary(
    from_: FromDay = None,
    to: ToDay = None,
    group_by: GroupBy = None,
) -> Response[str]:
    user = principal(router)
    query_params(router, "from", "to", "group_by")  # no other
    query = present({"from": from_, "to": to, "group_by": group_by})
    return model_response(200, UsageSummary, summary.usage_summary(user.user_id, query))


@router.get(
    "/ledger/export",
    security=BEARER,
    responses=answers(
        text(200, "The ledger entries of the range as CSV, oldest first.", CSV), 400, 401
    ),
)
def export_ledger(from_: FromDay = None, to: ToDay = None) -> Response[str]:
    user = principal(router)
    query_params(router, "from", "to")  # no other
    body, span = statement.statement_csv(user.user_id, present({"from": from_, "to": to}))
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


# INIT is over: garbage collection resumes (billing.init_phase).
init_phase.finished()
