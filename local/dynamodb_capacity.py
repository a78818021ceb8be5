"""DynamoDB's per-partition throughput: capacity units and one token bucket per partition key.

Every partition of a table or of a GSI serves about 3000 read units and 1000 write units a
second, on-demand tables included (AWS's "hot key" limit). A partition here is one partition
key value, the worst case (AWS may split a hot key's sort-key range; it never splits one
item). Units, as AWS counts them:
- a write: ceil(item KB), the larger of the item before and after; transactional: twice;
- a read: ceil(4 KB blocks) per item (GetItem) or per request (Query, Scan); eventually
  consistent reads half of it; transactional reads twice;
- a write to an item with GSI keys also writes each GSI: one write where the index key is
  unchanged, a delete and a put where it changed.

A bucket holds one second of its rate and refills continuously. A request may proceed while
its buckets hold any tokens; what it consumed is taken afterwards (at most one second of
debt), so a burst is throttled right after it, as AWS does.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

READ_BLOCK = 4096
WRITE_BLOCK = 1024

# (resource ARN-ish name, "read" | "write", partition key value as JSON text)
BucketKey = tuple[str, str, str]


def attribute_value_size(value: dict[str, Any]) -> int:
    """The size DynamoDB counts for one attribute value (close to AWS's published rules)."""
    ((kind, content),) = value.items()
    if kind == "S":
        return len(str(content).encode())
    if kind == "N":
        digits = str(content).lstrip("-").replace(".", "").lstrip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if kind == "B":
        return len(content) * 3 // 4 if isinstance(content, str) else len(content)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(v).encode()) for v in content)
    if kind == "NS":
        return sum(attribute_value_size({"N": v}) for v in content)
    if kind == "BS":
        return sum(attribute_value_size({"B": v}) for v in content)
    if kind == "L":
        return 3 + sum(1 + attribute_value_size(v) for v in content)
    if kind == "M":
        return 3 + sum(len(k.encode()) + 1 + attribute_value_size(v) for k, v in content.items())
    return len(str(content))


def item_size(attributes: dict[str, Any] | None) -> int:
    """Size of an item given as DynamoDB JSON (name -> typed value)."""
    if not attributes:
        return 0
    return sum(len(name.encode()) + attribute_value_size(v) for name, v in attributes.items())


def write_units(size: int, transactional: bool = False) -> float:
    units = max(1, math.ceil(size / WRITE_BLOCK))
    return float(units * (2 if transactional else 1))


def read_units(size: int, consistent: bool, transactional: bool = False) -> float:
    blocks = max(1, math.ceil(size / READ_BLOCK))
    if transactional:
        return float(blocks * 2)
    return float(blocks) if consistent else blocks / 2


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class Partitions:
    """The token buckets, created full on first use."""

    read_rate: float
    write_rate: float
    _buckets: dict[BucketKey, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _since_sweep: int = 0

    def _rate(self, kind: str) -> float:
        return self.read_rate if kind == "read" else self.write_rate

    def _bucket(self, key: BucketKey, now: float) -> _Bucket:
        rate = self._rate(key[1])
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(rate, now)
        else:
            bucket.tokens = min(rate, bucket.tokens + rate * (now - bucket.updated))
            bucket.updated = now
        return bucket

    def exhausted(self, keys: list[BucketKey], now: float) -> set[BucketKey]:
        """The buckets among these that hold no tokens now."""
        with self._lock:
            return {key for key in keys if self._bucket(key, now).tokens <= 0}

    def tokens(self, keys: list[BucketKey], now: float) -> dict[BucketKey, float]:
        """What these buckets hold now (for batches, which plan item by item)."""
        with self._lock:
            return {key: self._bucket(key, now).tokens for key in keys}

    def consume(self, usage: dict[BucketKey, float], now: float) -> None:
        with self._lock:
            for key, units in usage.items():
                bucket = self._bucket(key, now)
                bucket.tokens = max(-self._rate(key[1]), bucket.tokens - units)
            self._since_sweep += 1
            if self._since_sweep >= 10_000:
                self._sweep(now)

    def _sweep(self, now: float) -> None:
        # Full buckets carry no state: forget them, so the map stays as small as the hot set.
        self._since_sweep = 0
        for key in list(self._buckets):
            if self._bucket(key, now).tokens >= self._rate(key[1]):
                del self._buckets[key]
