"""Payment webhook function: one handler for every provider's webhook (no JWT).

Verify the provider's signature on the raw body, queue the normalised events, then answer the
provider in its own protocol. Provider modules are imported per request, so one that is
missing or broken cannot take the others down.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from billing.errors import InvalidRequest
from billing.http import make_router
from billing.payments import webhooks
from billing.payments.providers.base import WebhookRequest

logger = Logger()
router = make_router()

# The routes of infra/template.yaml: EPay notifies with GET or POST, the others POST.
ROUTES: dict[str, list[str]] = {
    "stripe": ["POST"],
    "epay": ["GET", "POST"],
    "creem": ["POST"],
    "waffo": ["POST"],
}


def webhook_request() -> WebhookRequest:
    """The request exactly as the provider sent it: API Gateway's base64 undone."""
    event = router.current_event
    raw = event.raw_event.get("body") or ""
    if event.raw_event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest("The body is not valid base64.") from exc
    else:
        body = raw.encode("utf-8")
    return WebhookRequest(
        method=event.http_method.upper(),
        headers={name.lower(): value for name, value in (event.headers or {}).items()},
        raw_body=body,
        query=dict(event.query_string_parameters or {}),
    )


def _receive(provider: str) -> Response[str]:
    reply = webhooks.receive(provider, webhook_request())
    return Response(
        status_code=reply.status,
        content_type=reply.content_type,
        body=reply.body,
        headers=dict(reply.headers),
    )


def _register(provider: str, methods: list[str]) -> None:
    def route() -> Response[str]:
        return _receive(provider)

    route.__name__ = f"{provider}_webhook"
    router.route(f"/webhooks/{provider}", method=methods)(route)


for _provider, _methods in ROUTES.items():
    _register(_provider, _methods)


@logger.inject_lambda_context(
    clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_HTTP
)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return router.resolve(event, context)
