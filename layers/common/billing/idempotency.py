"""Idempotency-Key for the POSTs that move quota or money (API.md, Conventions).

Powertools' idempotency utility over the IdempotencyTable. The first request under a key runs
and its reply (status and body) is kept for `TTL_SECONDS`; the same key with the same request
again gets that reply, marked replayed, and runs nothing; the same key with another request
(payload validation: a hash of the path parameters and the parsed body) is 409
`idempotency_key_reused`; while the first one still runs, 409 `idempotency_key_in_progress`
with Retry-After (the same key, tried again, then gets the stored reply). Keys are scoped per
operation and caller: another user's identical key is another key. A request that fails (any
error) keeps nothing, so a corrected request may reuse its key.

The stored reply alone is not what makes a quota change happen once: `cause()` gives the
operation a stable id of the request, from which it derives its ledger entry ids, so a retry
that outlives the stored reply (or an attempt cut short by a timeout) still applies at most
once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from billing.errors import IdempotencyKeyInProgress, IdempotencyKeyReused, InvalidRequest
from billing.http import json_response
from billing.restore import after_restore, preload_before_snapshot

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
    )
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

# Powertools' idempotency utility imports boto3 (its table client): a request without an
# Idempotency-Key never needs it, so it is imported with the first keyed request, or before
# a SnapStart snapshot (billing.restore).
_UTILITY = "aws_lambda_powertools.utilities.idempotency"
preload_before_snapshot(_UTILITY)

HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
TTL_SECONDS = 24 * 60 * 60
MAX_KEY_LENGTH = 255
_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")  # visible ASCII, as HTTP headers carry
_REPLAYED = "replayed"


class Reply(NamedTuple):
    """What an operation answered: the HTTP status and the JSON body."""

    status: int
    body: Any
    replayed: bool = False


def parse_key(value: str | None) -> str | None:
    """The header's key; None when absent. A present but malformed key is refused rather than
    ignored (ignoring it would quietly run a retry twice)."""
    if value is None:
        return None
    if not _KEY.fullmatch(value):
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters."
        )
    return value


def cause(operation: str, caller: str, key: str, request: Mapping[str, Any]) -> str:
    """A stable id of this request under its key: the same key and request give the same id,
    another caller, key or request another one."""
    material = json.dumps([operation, caller, key, request], sort_keys=True, separators=(",", ":"))
    return "key-" + hashlib.sha256(material.encode()).hexdigest()[:40]


def _mark_replayed(response: Any, idempotent_data: DataRecord) -> Any:
    # Powertools calls this only for a reply read back from the table.
    return {**response, _REPLAYED: True}


_config: IdempotencyConfig | None = None
_store: DynamoDBPersistenceLayer | None = None


def _idempotency_config() -> IdempotencyConfig:
    global _config
    if _config is None:
        from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig

        _config = IdempotencyConfig(
            event_key_jmespath="scope",
            payload_validation_jmespath="request",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=TTL_SECONDS,
            hash_function="sha256",
            response_hook=_mark_replayed,
        )
    return _config


def _persistence() -> DynamoDBPersistenceLayer:
    global _store
    if _store is None:
        from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

        table = os.environ.get("IDEMPOTENCY_TABLE")
        if not table:
            raise RuntimeError("IDEMPOTENCY_TABLE is not set for this function")
        _store = DynamoDBPersistenceLayer(table_name=table)
    return _store


@after_restore
def forget_store() -> None:
    """After a SnapStart restore: the idempotency table's client is made again on use."""
    global _store
    _store = None


def run_once(
    operation: str,
    caller: str,
    key: str,
    request: Mapping[str, Any],
    run: Callable[[], Reply],
    context: LambdaContext | None,
) -> Reply:
    """`run()` at most once per (operation, caller, key); its reply stored for replays."""
    from aws_lambda_powertools.utilities.idempotency import idempotent_function
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyValidationError,
    )

    config = _idempotency_config()
    if context is not None:
        # An attempt cut short by the function's timeout frees its key once the time is up.
        config.register_lambda_context(context)

    @idempotent_function(
        data_keyword_argument="data",
        persistence_store=_persistence(),
        config=config,
        key_prefix=f"idempotency#{operation}",
    )
    def execute(data: dict[str, Any]) -> dict[str, Any]:
        reply = run()
        return {"status": reply.status, "body": reply.body}

    try:
        stored = execute(data={"scope": [operation, caller, key], "request": dict(request)})
    except IdempotencyValidationError as exc:
        raise IdempotencyKeyReused() from exc
    except IdempotencyAlreadyInProgressError as exc:
        raise IdempotencyKeyInProgress() from exc
    return Reply(int(stored["status"]), stored["body"], replayed=bool(stored.get(_REPLAYED)))


class _FromEvent:
    """The Idempotency-Key not handed over by the route: read from the event's headers."""


_FROM_EVENT = _FromEvent()


def idempotent(
    router: APIGatewayHttpResolver | APIGatewayHttpRouter,
    operation: str,
    caller: str,
    request: Mapping[str, Any],
    run: Callable[[str], Reply],
    sent_key: str | _FromEvent | None = _FROM_EVENT,
) -> Response[str]:
    """The route's response under the request's Idempotency-Key, if it sent one.

    `request` is what a replay must match (path parameters and the parsed body). `run(cause)`
    does the work; `cause` is the stable id of the request under its key (without a key, API
    Gateway's request id: each request is its own cause). `sent_key` is the header as the
    route declares it (billing.api_docs.IdempotencyKey); by default it is read from the event.
    """
    event = router.current_event
    if isinstance(sent_key, _FromEvent):
        sent_key = (event.headers or {}).get(HEADER)
    key = parse_key(sent_key)
    if key is None:
        request_id = event.request_context.request_id
        if not request_id:  # API Gateway always sets it; never let all such requests share one
            raise InvalidRequest("The request has no id; send an Idempotency-Key.")
        reply = run(request_id)
    else:
        request_cause = cause(operation, caller, key, request)
        reply = run_once(
            operation, caller, key, request, lambda: run(request_cause), router.lambda_context
        )
    response = json_response(reply.status, reply.body)
    if reply.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response
