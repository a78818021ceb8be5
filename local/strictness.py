"""The switches of the stack's AWS strictness, read once from the environment.

Everything is on by default, as in AWS: index reads lag, partitions throttle, transactions
conflict, standard queues reorder and redeliver, schedules fire twice now and then, workers
are held to their MemorySize, async invocations retry, DynamoDB streams spread keys over
shards. A variable may turn one off (for a
benchmark), ``LOCAL_STRICT=0`` turns every one off at once (a variable set explicitly still
wins), and ``LOCAL_TIME_SCALE`` shortens the waits AWS makes (visibility timeouts, async
retry delays) without changing what happens, only when. See local/README.md.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass


class StrictnessError(ValueError):
    """A strictness variable has a value that cannot be used."""


def _number(environ: Mapping[str, str], name: str, default: float, lowest: float = 0.0) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StrictnessError(f"{name}={raw!r} is not a number") from None
    if value < lowest:
        raise StrictnessError(f"{name}={raw!r} must be at least {lowest:g}")
    return value


def _probability(environ: Mapping[str, str], name: str, default: float) -> float:
    value = _number(environ, name, default)
    if value > 1:
        raise StrictnessError(f"{name}={value:g} is a probability: 0..1")
    return value


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise StrictnessError(f"{name}={raw!r} must be 1 or 0")


@dataclass(frozen=True)
class Strictness:
    # DynamoDB: how long a write stays invisible to indexes and eventually consistent reads.
    index_lag_ms: float = 300.0
    # DynamoDB: per-partition token buckets (units per second, one second of burst).
    throttle: bool = True
    partition_write_units: float = 1000.0
    partition_read_units: float = 3000.0
    # DynamoDB: how long a TransactWriteItems holds its items (conflicts happen inside it).
    transaction_ms: float = 15.0
    # SQS event sources: concurrent batches of one mapping, reordering, duplicates.
    poller_threads: int = 3
    sqs_shuffle: bool = True
    sqs_duplicate_probability: float = 0.05
    # EventBridge schedules: at-least-once delivery.
    schedule_duplicate_probability: float = 0.1
    # DynamoDB Streams: shards per stream (a key's records stay in one; keys spread over them).
    stream_shards: int = 4
    # Lambda: MemorySize is a hard limit; async invocations retry on a function error.
    memory_limit: bool = True
    async_retries: bool = True
    # Waits AWS makes (visibility timeouts, async retry delays) are multiplied by this.
    time_scale: float = 1.0
    seed: int = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Strictness:
        on = _flag(environ, "LOCAL_STRICT", True)
        seed_text = environ.get("LOCAL_SEED", "").strip()
        try:
            seed = int(seed_text) if seed_text else random.SystemRandom().randrange(2**31)
        except ValueError:
            raise StrictnessError(f"LOCAL_SEED={seed_text!r} is not an integer") from None
        return cls(
            index_lag_ms=_number(environ, "LOCAL_INDEX_LAG_MS", cls.index_lag_ms if on else 0),
            throttle=_flag(environ, "LOCAL_THROTTLE", on),
            partition_write_units=_number(
                environ, "LOCAL_PARTITION_WRITE_UNITS", cls.partition_write_units, 1
            ),
            partition_read_units=_number(
                environ, "LOCAL_PARTITION_READ_UNITS", cls.partition_read_units, 1
            ),
            transaction_ms=_number(
                environ, "LOCAL_TRANSACTION_MS", cls.transaction_ms if on else 0
            ),
            poller_threads=int(
                _number(environ, "LOCAL_POLLER_THREADS", cls.poller_threads if on else 1, 1)
            ),
            sqs_shuffle=_flag(environ, "LOCAL_SQS_SHUFFLE", on),
            sqs_duplicate_probability=_probability(
                environ,
                "LOCAL_SQS_DUPLICATE_PROBABILITY",
                cls.sqs_duplicate_probability if on else 0,
            ),
            schedule_duplicate_probability=_probability(
                environ,
                "LOCAL_SCHEDULE_DUPLICATE_PROBABILITY",
                cls.schedule_duplicate_probability if on else 0,
            ),
            stream_shards=int(
                _number(environ, "LOCAL_STREAM_SHARDS", cls.stream_shards if on else 1, 1)
            ),
            memory_limit=_flag(environ, "LOCAL_MEMORY_LIMIT", on),
            async_retries=_flag(environ, "LOCAL_ASYNC_RETRIES", on),
            time_scale=_number(environ, "LOCAL_TIME_SCALE", 1.0),
            seed=seed,
        )

    def scaled(self, seconds: float) -> float:
        """A wait AWS makes, in this stack's time."""
        return seconds * self.time_scale

    def random(self, purpose: str) -> random.Random:
        """A generator for one purpose (one queue, one schedule): deterministic per seed."""
        return random.Random(f"{self.seed}:{purpose}")  # noqa: S311 - simulation, not secrets

    def describe(self) -> str:
        return (
            f"index lag {self.index_lag_ms:g} ms, throttling "
            f"{'on' if self.throttle else 'off'}, transactions held {self.transaction_ms:g} ms, "
            f"{self.poller_threads} batches per SQS source, shuffle "
            f"{'on' if self.sqs_shuffle else 'off'}, duplicates SQS "
            f"{self.sqs_duplicate_probability:g} / schedules "
            f"{self.schedule_duplicate_probability:g}, {self.stream_shards} shards per "
            f"DynamoDB stream, memory limit "
            f"{'on' if self.memory_limit else 'off'}, async retries "
            f"{'on' if self.async_retries else 'off'}, time scale {self.time_scale:g}, "
            f"seed {self.seed} (LOCAL_SEED)"
        )
