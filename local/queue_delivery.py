"""How an SQS event source hands messages to its function, as loosely as SQS and Lambda do.

A standard queue promises neither order nor a single delivery, and Lambda's event source
runs several batches at once. So, for a standard queue:
- the messages of each receive are shuffled, and some are held back for the next batch
  (never twice in a row), so a message sent later may be processed first, by another batch
  running at the same time;
- with LOCAL_SQS_DUPLICATE_PROBABILITY a delivered message is delivered once more in a later
  batch: the same MessageId, body and attributes under a receipt handle of its own (as SQS's
  at-least-once delivery does), possibly while the first delivery is still being processed.
  The copy is never deleted or retried by the poller: the first delivery's outcome stands;
- failed messages come back when the queue's VisibilityTimeout, counted from their receive,
  has passed (times LOCAL_TIME_SCALE: a fast mode changes when, not what).
A FIFO queue keeps its order per message group (moto locks a group while its messages are
in flight): nothing is shuffled, held back or copied.

Decisions come from one random generator per event source, seeded from LOCAL_SEED.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("local.queue_delivery")

Message = dict[str, Any]

COPY_MARK = "_local_duplicate"  # set on a delivered copy (never sent to the function)
HOLD_PROBABILITY = 0.25
# Lambda invokes with what fits its payload limit, BatchSize or not: the rest waits for a
# later batch, as Lambda's poller keeps it (6 MB, with the {"Records": []} around the records).
MAX_PAYLOAD = 6 * 1024 * 1024
ENVELOPE_BYTES = len('{"Records": []}')


def is_copy(message: Message) -> bool:
    return bool(message.get(COPY_MARK))


@dataclass
class Arranger:
    """Turns what a poller received into the batch it delivers now."""

    fifo: bool
    shuffle: bool
    duplicate_probability: float
    rng: random.Random
    held: list[Message] = field(default_factory=list)
    _held_twice: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    duplicates: int = 0
    held_back: int = 0

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self.held)

    def batch(
        self,
        received: list[Message],
        batch_size: int,
        size_of: Callable[[Message], int] | None = None,
    ) -> list[Message]:
        """The batch to deliver now: up to `batch_size` messages whose records (`size_of`
        each, in the invocation's JSON) fit MAX_PAYLOAD; what does not fit waits, held."""
        sizer = _Payload(size_of)
        batch: list[Message] = []
        if self.fifo:
            with self._lock:
                pool = [*self.held, *received]
                self.held = []
                for message in pool:  # in order: a group's next message waits with the rest
                    if self.held or len(batch) >= batch_size or not sizer.fits(message, batch):
                        self.held.append(message)
                    else:
                        sizer.add(message, batch)
                        batch.append(message)
                return batch
        with self._lock:
            pool = [*self.held, *received]
            self.held = []
            if self.shuffle:
                self.rng.shuffle(pool)
            ids: set[str] = set()
            for message in pool:
                message_id = str(message.get("MessageId"))
                full = len(batch) >= batch_size or not sizer.fits(message, batch)
                hold = (
                    self.shuffle
                    and not is_copy(message)
                    and message_id not in self._held_twice
                    and self.rng.random() < HOLD_PROBABILITY
                )
                if full or message_id in ids or hold:
                    if hold and not full and message_id not in ids:
                        self._held_twice.add(message_id)
                        self.held_back += 1
                    self.held.append(message)
                    continue
                self._held_twice.discard(message_id)
                ids.add(message_id)
                sizer.add(message, batch)
                batch.append(message)
            for message in batch:
                if not is_copy(message) and self.rng.random() < self.duplicate_probability:
                    self.duplicates += 1
                    self.held.append(_copy(message))
            return batch


class _Payload:
    """The bytes a batch's records take in its invocation so far."""

    def __init__(self, size_of: Callable[[Message], int] | None) -> None:
        self.size_of = size_of
        self.bytes = ENVELOPE_BYTES

    def _size(self, message: Message, batch: list[Message]) -> int:
        assert self.size_of is not None
        return self.size_of(message) + (2 if batch else 0)  # ", " between records

    def fits(self, message: Message, batch: list[Message]) -> bool:
        """Whether `message` fits after `batch`; a lone message always does (SQS's own limit
        keeps it far below Lambda's)."""
        if self.size_of is None or not batch:
            return True
        return self.bytes + self._size(message, batch) <= MAX_PAYLOAD

    def add(self, message: Message, batch: list[Message]) -> None:
        """Count in `message`, appended after `batch`."""
        if self.size_of is not None:
            self.bytes += self._size(message, batch)


def _copy(message: Message) -> Message:
    copy = dict(message)
    copy["ReceiptHandle"] = f"{message['ReceiptHandle']}-copy"
    copy[COPY_MARK] = True
    return copy


@dataclass(order=True)
class _Release:
    at: float
    order: int
    messages: list[Message] = field(compare=False)


class Releases:
    """Makes failed messages visible again at their time (one thread per event source)."""

    def __init__(self, release: Callable[[list[Message]], None], name: str) -> None:
        self._release = release
        self._heap: list[_Release] = []
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"release-{name}", daemon=True)
        self._thread.start()

    def at(self, when: float, messages: list[Message]) -> None:
        if not messages:
            return
        with self._cond:
            heapq.heappush(self._heap, _Release(when, next(self._order), messages))
            self._cond.notify()

    def stop(self) -> None:
        # Messages not released yet come back by themselves when their timeout ends.
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0].at > time.monotonic()):
                    timeout = self._heap[0].at - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                due = heapq.heappop(self._heap)
            try:
                self._release(due.messages)
            except Exception:
                log.exception("could not make %d failed messages visible again", len(due.messages))
