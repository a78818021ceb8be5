"""Storing new codes with BatchWriteItem, and knowing which of them are stored.

A batch write may come back with unprocessed items (throttling, a busy partition), and a
call may fail after DynamoDB applied it (a lost response) or before. So every code is
tracked: `new` (never written), `uncertain` (a call that carried it failed: it may be in the
table) or `stored` (a call that carried it succeeded and did not hand it back). Unprocessed
and failed codes are sent again, 25 at a time, with backoff (billing.retry) between rounds,
until all are stored or the time budget is spent; the uncertain ones left are then looked
up (consistent reads). Only codes known to be stored may be handed out; the few that stay
unknown are named (by code_id, never by plaintext) for an admin, who can disable them.

Rewriting a code that was in fact stored is harmless: nobody can have redeemed it, since
its plaintext has not been shown to anyone yet.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError
from pynamodb.exceptions import PynamoDBException

from billing import retry
from billing.models import RedemptionCode

logger = Logger(child=True)

BATCH = 25  # BatchWriteItem's limit
_BACKOFF = {"base": 0.05, "cap": 1.0}


class Outcome:
    __slots__ = ("error", "retryable", "stored", "unconfirmed")

    def __init__(self) -> None:
        self.stored: set[str] = set()  # code_ids known to be in the table
        self.unconfirmed: list[str] = []  # may or may not be stored
        self.error: Exception | None = None  # the last failure, if any
        self.retryable = True  # whether that failure may pass (throttling, a lost response)


def _retryable(exc: Exception) -> bool:
    code = retry.error_code(exc)
    return code is None or code in retry.THROTTLING


def store(codes: Sequence[RedemptionCode], *, deadline: float) -> Outcome:
    """Write `codes` (new items) until each is known stored or `deadline` (monotonic) passes."""
    by_id = {code.code_id: code for code in codes}
    state = dict.fromkeys(by_id, "new")
    waiting = deque(by_id)
    outcome = Outcome()
    attempt = 0
    while waiting and time.monotonic() < deadline:
        chunk = [waiting.popleft() for _ in range(min(BATCH, len(waiting)))]
        # PynamoDB sends the unprocessed items again twice at once, then hands them back.
        batch = RedemptionCode.batch_write(auto_commit=False)
        for code_id in chunk:
            batch.save(by_id[code_id])
        try:
            batch.commit()
            unprocessed: set[str] = set()
        except (PynamoDBException, BotoCoreError) as exc:
            handed_back = getattr(batch, "failed_operations", None) or []
            if not handed_back:  # the call itself failed: any of the chunk may be stored
                outcome.error, outcome.retryable = exc, _retryable(exc)
                state.update({c: "uncertain" for c in chunk if state[c] != "stored"})
                logger.warning(
                    "code batch write failed",
                    extra={
                        "codes": len(chunk),
                        "error": retry.error_code(exc) or type(exc).__name__,
                    },
                )
                if not outcome.retryable:
                    break
                waiting.extendleft(reversed(chunk))
                retry.pause(attempt, **_BACKOFF)
                attempt += 1
                continue
            unprocessed = {item["PutRequest"]["Item"]["code_id"]["S"] for item in handed_back}
        for code_id in chunk:
            if code_id not in unprocessed:
                state[code_id] = "stored"
        if unprocessed:
            waiting.extendleft(reversed([code_id for code_id in chunk if code_id in unprocessed]))
            # The backoff grows only while nothing gets through.
            attempt = attempt + 1 if len(unprocessed) == len(chunk) else 0
            retry.pause(attempt, **_BACKOFF)
        else:
            attempt = 0
    outcome.stored = {code_id for code_id, s in state.items() if s == "stored"}
    uncertain = [code_id for code_id, s in state.items() if s == "uncertain"]
    if uncertain:
        found = _look_up(uncertain)
        outcome.stored |= found or set()
        outcome.unconfirmed = [] if found is not None else uncertain
    if len(outcome.stored) < len(codes):
        logger.warning(
            "codes not stored",
            extra={
                "requested": len(codes),
                "stored": len(outcome.stored),
                "unconfirmed": len(outcome.unconfirmed),
            },
        )
    return outcome


def _look_up(code_ids: list[str]) -> set[str] | None:
    """Which of these codes are in the table (None: the reads failed too)."""
    try:
        return {
            code.code_id
            for code in RedemptionCode.batch_get(
                code_ids, consistent_read=True, attributes_to_get=["code_id"]
            )
        }
    except (PynamoDBException, BotoCoreError) as exc:
        logger.warning("code lookup failed", extra={"error": type(exc).__name__})
        return None
