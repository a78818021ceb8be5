"""Webhook intake, the same for every provider: verify → queue → acknowledge.

A verified event is acknowledged only once it is on the credit queue (if SQS refuses, the
caller answers 5xx and the provider retries); a webhook that fails verification is refused with
the provider's own refusal and nothing is queued. Crediting happens off the queue.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

from billing import clock, metrics
from billing.errors import DomainError
from billing.facts import ErrorCode
from billing.metrics import Metric
from billing.payments import payment_queue
from billing.payments.providers import METHODS, get_provider
from billing.payments.providers.base import (
    InvalidSignature,
    UnsupportedEvent,
    WebhookReply,
    WebhookRequest,
)
from billing.secrets import provider_secrets

logger = Logger(child=True)


class ProviderUnavailable(DomainError):
    """The provider's module is not deployed: 503 so the provider retries later."""

    code = ErrorCode.PROVIDER_UNAVAILABLE.value
    status = 503
    message = "This payment provider is not available right now."


class QueueUnavailable(DomainError):
    """The event could not be queued: 503 so the provider delivers it again."""

    code = ErrorCode.QUEUE_UNAVAILABLE.value
    status = 503
    message = "The event could not be recorded; please retry."


def receive(provider_name: str, request: WebhookRequest) -> WebhookReply:
    if provider_name not in METHODS:
        raise ProviderUnavailable()
    try:
        provider = get_provider(provider_name)
    except Exception as exc:  # missing or broken module: 503, the provider retries later
        logger.exception("payment provider module unavailable", extra={"provider": provider_name})
        raise ProviderUnavailable() from exc
    creds = provider_secrets()
    try:
        events = provider.parse_webhook(request, creds)
    except InvalidSignature as exc:
        # Never log the body or the signature header: only that it was refused.
        logger.warning(
            "webhook refused", extra={"provider": provider_name, "reason": str(exc)[:100]}
        )
        metrics.count(Metric.WEBHOOKS_REFUSED, provider=provider_name, reason=_refusal_reason(exc))
        return provider.reply(False, creds)
    except UnsupportedEvent as exc:
        logger.info(
            "webhook ignored", extra={"provider": provider_name, "event_type": str(exc)[:100]}
        )
        return provider.reply(True, creds)
    # When the provider reached us: a payment received before its order expired is on time,
    # however long the credit queue takes to deliver it.
    received_at = clock.iso()
    for event in (e._replace(received_at=received_at) for e in events):
        try:
            payment_queue.send(event)
        except Exception as exc:
            logger.exception(
                "could not queue a payment event",
                extra={"provider": provider_name, "event_id": event.event_id},
            )
            raise QueueUnavailable() from exc
        logger.info(
            "payment event queued",
            extra={
                "provider": provider_name,
                "event_id": event.event_id,
                "type": str(event.type),
                "order_id": event.order_id,
            },
        )
    return provider.reply(True, creds)


def _refusal_reason(exc: InvalidSignature) -> str:
    """A low-cardinality reason for the metric: a signature that does not verify, or a body
    that is not a notification at all."""
    return "signature" if "sign" in str(exc) or "secret" in str(exc) else "malformed"
