"""Payment webhook function: one handler for every provider's webhook (no JWT).

Verify the provider's signature on the raw body, queue the normalised events, then answer the
provider in its own protocol. Provider modules are imported per request, so one that is
missing or broken cannot take the others down.
"""

from __future__ import annotations

import base64
import binascii
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from billing import init_phase
from billing.api_docs import RAW_JSON_BODY, Responses, answers, ok, signature_header, text
from billing.api_models_webhooks import WebhookAck
from billing.errors import InvalidRequest
from billing.http import make_router
from billing.payments import webhooks
from billing.payments.providers.base import WebhookRequest

if TYPE_CHECKING:
    # An annotation only: Powertools' typing module is nothing the handler runs.
    from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
router = make_router()


@dataclass(frozen=True)
class Webhook:
    """A provider's webhook route as its protocol has it (no JWT: security none)."""

    methods: list[str]
    responses: Responses
    # The header its signature of the raw JSON body comes in (EPay signs its parameters).
    signature: str | None = None


# The routes of infra/template.yaml: EPay notifies with GET or POST, the others POST.
WEBHOOKS: dict[str, Webhook] = {
    "stripe": Webhook(
        ["POST"],
        answers(ok(200, WebhookAck, "Received (queued or ignored)."), 400, 413, 503),
        "Stripe-Signature",
    ),
    "epay": Webhook(
        ["GET", "POST"],
        # EPay's protocol: the text "success", or "fail".
        answers(text(200, "success"), text(400, "fail (bad sign or not a notification)"), 413, 503),
    ),
    "creem": Webhook(
        ["POST"], answers(ok(200, WebhookAck, "Received."), 401, 413, 503), "creem-signature"
    ),
    "waffo": Webhook(
        ["POST"], answers(ok(200, WebhookAck, 'Signed {"message": ...}.'), 413, 503), "X-SIGNATURE"
    ),
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


def _register(provider: str, hook: Webhook) -> None:
    def route(signature: str | None = None) -> Response[str]:
        # Declared for the document; the provider's module verifies it on the raw request.
        del signature
        return _receive(provider)

    if hook.signature is None:
        route.__signature__ = inspect.Signature(return_annotation=Response[str])  # type: ignore[attr-defined]
    else:
        route.__annotations__ = {
            "signature": signature_header(hook.signature),
            "return": Response[str],
        }
    route.__name__ = f"{provider}_webhook"
    router.route(
        f"/webhooks/{provider}",
        method=hook.methods,
        responses=hook.responses,
        openapi_extensions=RAW_JSON_BODY if hook.signature else None,
    )(route)


for _provider, _hook in WEBHOOKS.items():
    _register(_provider, _hook)


@logger.inject_lambda_context(
    clear_state=True, correlation_id_path=correlation_paths.API_GATEWAY_HTTP
)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return router.resolve(event, context)


# INIT is over: garbage collection resumes (billing.init_phase).
init_phase.finished()
