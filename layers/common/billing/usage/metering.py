"""Usage metering: charge, reserve, settle and release, one event or many at a time.

Every action is idempotent per (request_id, action): the usage record of a request_id (the
usage log entry) is written in the SAME ledger transaction as the balance change, under
`attribute_not_exists` for a first action and under a status condition for a later one, and
it keeps each action's first result; the same request_id and action again returns that
result with status `duplicate` and writes nothing.

Any delivery order holds (the usage queue is not ordered). What a request_id is billed
depends only on which actions arrived, never on their order:
- a settle always bills its usage, once: it replaces an open hold, or, when the hold is not
  there (the settle came first, the hold was released or expired), it bills the full price
  with no hold (and may take the balance below zero, as any settle may);
- a release with no hold before it leaves a `released` record with nothing held (a
  tombstone), so a late reserve finds the request closed;
- a reserve or release that finds the request closed (settled, released, expired) changes
  nothing and answers `duplicate` of the result that closed it.
So a hold is open only while a reserve has arrived and neither settle nor release has.

Events are aggregated per user so that one account update serves many events (the account
item is the hot key): the admission of each event is decided here, in input order, against
the account as read, and one ledger transaction per chunk writes the account (conditional on
its version), at most one `usage` ledger entry for the chunk's charges, one for its settles,
and the chunk's usage records (at most 100 items). A concurrent change of the account makes
the whole chunk be decided again from a fresh read, so every result (balance included) is
exact. A chunk that meets an existing usage record (a duplicate, or a hold that changed) is
sorted out from the records and retried without the events already decided.

Metering can be given a deadline (time.monotonic()): no step (a batch read, or one chunk's
transaction) starts unless a step as long as the longest one seen so far would still end
before it, and the events not metered by then come back without a result, like those a
transient error left; metering them again later is safe (what was written is recognised as
a duplicate). Measuring the steps keeps a slow table (throttling, backoff, a busy machine)
from running past the deadline by more than one unusually slow step.

Available balance = quota - held_quota. A charge or reserve never takes it below zero; a
settle may (the usage already happened) by the part above its hold only. Holds live
`limits.hold_ttl_seconds`; the sweeper (`release_expired`) drops the expired ones, and a
settle arriving after that still charges the usage, all of it now above the (dropped) hold.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.attributes import MapAttribute
from pynamodb.exceptions import PynamoDBException

from billing import clock, ledger, metrics, retry
from billing import grants as grant_math
from billing.errors import (
    AccountNotFound,
    DomainError,
    InsufficientQuota,
    InvalidEvent,
    LimitExceeded,
)
from billing.facts import UsageStatus as Status  # re-exported: metering.Status
from billing.models import Account, LimitCounter, UsageRecord, limit_window_key, usage_user_shard
from billing.settings import Settings, load_settings
from billing.usage import limits, pricing

Result = dict[str, Any]

# Shards of the open_holds index, for all users together: its sort key (the expiry) only
# grows, and a hold writes it twice (reserve, then settle or release), so 64 keep each under
# 1000 writes a second at 25,000 events a second (bench/capacity.py). Raise only: the sweeper
# reads shards 0..HOLD_SHARDS-1.
HOLD_SHARDS = 64
# A transaction holds at most 100 items: the account, up to two ledger entries, the records.
MAX_RECORDS_PER_TRANSACTION = 97
# Re-reads of a contended account before the event is handed back as retryable.
MAX_ATTEMPTS = 60
# Records (and accounts) read at once: BatchGetItem's limit.
READ_SLICE = 100

# Errors after which a retry may succeed (throttling, contention, a network failure).
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    ledger.LedgerContention,
    PynamoDBException,
    BotoCoreError,
    ClientError,
)


class Action(StrEnum):
    CHARGE = "charge"
    RESERVE = "reserve"
    SETTLE = "settle"
    RELEASE = "release"


class UsageEvent(NamedTuple):
    """One validated usage event (the handler parses and validates the payload)."""

    action: Action
    request_id: str
    user_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    group: str | None = None
    key_id: str | None = None  # the API key the gateway served (spend limits per key)


class Metered(NamedTuple):
    """Results in input order; None where a transient error or the deadline left the event
    unmetered (`timed_out` tells that the deadline did)."""

    results: list[Result | None]
    errors: Sequence[Exception] = ()
    timed_out: bool = False

    @property
    def complete(self) -> bool:
        return all(result is not None for result in self.results)


def rejected(
    request_id: str | None, error: DomainError, *, quota: int = 0, balance: int | None = None
) -> Result:
    return {
        "request_id": request_id,
        "status": Status.REJECTED.value,
        "quota": quota,
        "balance": balance,
        "error": error.code,
        "message": error.message,
    }


class _Pending:
    """An event on its way through the ledger, with what is known of its usage record."""

    __slots__ = (
        "attempt",
        "counters",
        "event",
        "expire",
        "from_status",
        "hold",
        "index",
        "prefetch",
        "quote",
        "record",
    )  # fmt: skip

    def __init__(
        self,
        index: int,
        event: UsageEvent,
        quote: pricing.Quote | None,  # None for a release (it has no price)
        record: UsageRecord | None = None,  # read from the table (settle/release, retries)
        hold: int = 0,  # the hold a settle replaces or a release drops
        from_status: str = Status.RESERVED.value,  # status the record must still have
        expire: bool = False,  # a release by the sweeper
        prefetch: bool = False,  # read the record before writing (a repeat in the batch)
    ) -> None:
        self.index = index
        self.event = event
        self.quote = quote
        self.record = record
        self.hold = hold
        self.from_status = from_status
        self.expire = expire
        self.counters: list[str] = []  # spend-limit counters it moves
        self.prefetch = prefetch
        # Stored with the result: a record carrying it was written by this very call (a
        # retry of a transaction that had in fact committed), which is no duplicate.
        self.attempt = uuid.uuid4().hex

    @property
    def request_id(self) -> str:
        return self.event.request_id


# ---------------------------------------------------------------- entry points


class _OutOfTime(Exception):
    """The deadline passed: what is left is handed back unmetered."""


def past(deadline: float | None) -> bool:
    """Whether a deadline (time.monotonic()) has passed; None never does."""
    return deadline is not None and time.monotonic() >= deadline


class _Timer:
    """A deadline, and the longest step timed against it."""

    __slots__ = ("deadline", "longest")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.longest = 0.0

    def out_of_time(self) -> bool:
        """Whether a step as long as the longest so far would end after the deadline."""
        return self.deadline is not None and time.monotonic() + self.longest >= self.deadline

    @contextmanager
    def step(self) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.longest = max(self.longest, time.monotonic() - started)


def meter(
    events: Sequence[UsageEvent],
    *,
    settings: Settings | None = None,
    now: datetime | None = None,
    deadline: float | None = None,
    redelivered: Sequence[bool] | None = None,
) -> Metered:
    """Meter validated events; results come back in input order.

    `deadline` (a time.monotonic() value): no step starts that would likely end after it
    (module docstring); the events left have no result (None) and `timed_out` is set.
    `redelivered` marks the events that may have been metered before (a message SQS delivers
    again): their records are read up front, so what was written already costs no
    transaction on the retry.
    """
    settings = settings or load_settings()
    results: list[Result | None] = [None] * len(events)
    # Each user's events are applied in input order. A request_id that comes again for the
    # same user starts a new segment, written after the first: the repeat then meets the
    # record (a duplicate, or the settle of a hold reserved earlier in the batch).
    waves: list[list[_Pending]] = []
    segments: dict[str, tuple[int, set[str]]] = {}
    seen: set[tuple[str, str]] = set()
    for index, event in enumerate(events):
        try:
            quote = (
                None
                if event.action is Action.RELEASE
                else pricing.quote(
                    settings,
                    event.model,
                    event.prompt_tokens,
                    event.completion_tokens,
                    event.group,
                )
            )
        except DomainError as exc:
            results[index] = rejected(event.request_id, exc)
            continue
        segment, request_ids = segments.get(event.user_id, (0, set()))
        repeat = event.request_id in request_ids
        if repeat:
            segment, request_ids = segment + 1, set()
        request_ids.add(event.request_id)
        segments[event.user_id] = (segment, request_ids)
        key = (event.user_id, event.request_id)
        if segment == len(waves):
            waves.append([])
        # A request_id seen before in the batch has a record by now: read it up front.
        again = key in seen or bool(redelivered and redelivered[index])
        waves[segment].append(_Pending(index, event, quote, prefetch=again))
        seen.add(key)
    errors: list[Exception] = []
    failed_users: set[str] = set()
    timer = _Timer(deadline)
    for members in waves:
        # A user whose earlier events were left unmetered stops there: its later events (the
        # repeats of its request_ids) come after them, on the retry.
        live = [p for p in members if p.event.user_id not in failed_users]
        if _run_wave(live, results, errors, failed_users, settings, now, timer):
            return Metered(results, errors, timed_out=True)
    return Metered(results, errors)


def release_expired(
    *,
    settings: Settings | None = None,
    now: datetime | None = None,
    deadline: float | None = None,
) -> dict[str, int]:
    """The sweeper: release every hold whose lifetime is over (each release idempotent).

    With a deadline, the holds it leaves are released by the next run."""
    settings = settings or load_settings()
    cutoff = clock.iso(now)
    found = (
        item.request_id
        for shard in range(HOLD_SHARDS)
        for item in UsageRecord.open_holds.query(f"h#{shard}", UsageRecord.hold_expires_at < cutoff)
    )
    request_ids = list(dict.fromkeys(found))
    records = _read_records(request_ids)
    pendings: list[_Pending] = []
    for index, request_id in enumerate(request_ids):
        record = records.get(request_id)
        if record is None:
            continue
        event = UsageEvent(
            action=Action.RELEASE,
            request_id=request_id,
            user_id=record.user_id,
            model=record.model,
            prompt_tokens=0,
            completion_tokens=0,
            group=record.group,
        )
        pendings.append(_Pending(index, event, None, record=record, expire=True, prefetch=True))
    results: list[Result | None] = [None] * len(request_ids)
    errors: list[Exception] = []
    timer = _Timer(deadline)
    _run_wave(pendings, results, errors, set(), settings, now, timer, records=records)
    if errors:
        raise errors[0]
    released = sum(1 for r in results if r is not None and r["status"] == Status.RELEASED)
    return {"expired": len(request_ids), "released": released}


# ---------------------------------------------------------------- one wave of events


def _needs_record(p: _Pending) -> bool:
    # Settle and release need the hold on the record; repeats need the record's state.
    return p.prefetch or p.event.action in (Action.SETTLE, Action.RELEASE)


def _slices(by_user: Mapping[str, list[_Pending]]) -> Iterator[list[str]]:
    """The users of a wave in groups whose reads fit one batch read (records and accounts),
    so that each step is bounded and the deadline is looked at between them."""
    current: list[str] = []
    wanted = 0
    for user_id, pendings in by_user.items():
        need = sum(1 for p in pendings if _needs_record(p))
        if current and (wanted + need > READ_SLICE or len(current) >= READ_SLICE):
            yield current
            current, wanted = [], 0
        current.append(user_id)
        wanted += need
    if current:
        yield current


def _run_wave(
    wave: list[_Pending],
    results: list[Result | None],
    errors: list[Exception],
    failed_users: set[str],
    settings: Settings,
    now: datetime | None,
    timer: _Timer,
    *,
    records: Mapping[str, UsageRecord] | None = None,
) -> bool:
    """Meter one wave, a slice of users at a time; True when the deadline stopped it (the
    rest is left unmetered)."""
    by_user: dict[str, list[_Pending]] = {}
    for p in wave:
        by_user.setdefault(p.event.user_id, []).append(p)
    for users in _slices(by_user):
        if timer.out_of_time():
            return True
        members = [p for user_id in users for p in by_user[user_id]]
        if _run_slice(members, results, errors, failed_users, settings, now, timer, records):
            return True
    return False


def _run_slice(
    members: list[_Pending],
    results: list[Result | None],
    errors: list[Exception],
    failed_users: set[str],
    settings: Settings,
    now: datetime | None,
    timer: _Timer,
    records: Mapping[str, UsageRecord] | None,
) -> bool:
    wanted = {p.request_id for p in members if _needs_record(p)}
    if records is None:
        try:
            with timer.step():
                records = _read_records(sorted(wanted))
        except TRANSIENT_ERRORS as exc:
            errors.append(exc)
            failed_users.update(p.event.user_id for p in members)
            return False
    ready: list[_Pending] = []
    for p in members:
        if p.request_id in wanted:
            final = _resolve(p, records.get(p.request_id), now)
            if final is not None:
                results[p.index] = final
                continue
        ready.append(p)
    by_user: dict[str, list[_Pending]] = {}
    for p in ready:
        by_user.setdefault(p.event.user_id, []).append(p)
    try:
        with timer.step():
            accounts = _read_accounts(list(by_user))
    except TRANSIENT_ERRORS as exc:
        errors.append(exc)
        failed_users.update(by_user)
        return False
    for user_id, pendings in by_user.items():
        account = accounts.get(user_id)
        if account is None:
            for p in pendings:
                results[p.index] = rejected(p.request_id, AccountNotFound(), quota=_price(p))
            continue
        try:
            _meter_user(account, pendings, results, settings, now, timer)
        except AccountNotFound:
            for p in pendings:
                if results[p.index] is None:
                    results[p.index] = rejected(p.request_id, AccountNotFound(), quota=_price(p))
        except _OutOfTime:
            return True
        except TRANSIENT_ERRORS as exc:
            errors.append(exc)
            failed_users.add(user_id)
    return False


def _meter_user(
    account: Account,
    pendings: list[_Pending],
    results: list[Result | None],
    settings: Settings,
    now: datetime | None,
    timer: _Timer,
) -> None:
    """Meter one user's events, in input order, one chunk (one transaction) at a time.

    _OutOfTime when the time is up before a chunk (the chunks written stay written).
    """
    user_id = account.user_id
    remaining = list(pendings)
    attempt = 0
    # After a chunk's spend-limit condition failed, its events go one per transaction, so
    # that exactly those that fit (in request order) are charged.
    one_by_one = 0
    while remaining:
        if timer.out_of_time():
            raise _OutOfTime()
        chunk = _admit(account, remaining, settings, now, single=one_by_one > 0)
        if not chunk.changes:
            # Only refusals: nothing to write, and they were decided on a current read.
            _record_results(chunk.decided, results, now)
            remaining = remaining[chunk.taken :]
            one_by_one = max(0, one_by_one - chunk.taken)
            continue
        try:
            with timer.step():
                applied = ledger.apply(
                    chunk.changes, chunk.ops, accounts={user_id: account}, max_attempts=1
                )
        except ledger.LedgerContention:
            # The account changed since it was read: decide the chunk again from a fresh read.
            attempt += 1
            if attempt >= MAX_ATTEMPTS:
                raise
            metrics.count(metrics.Metric.LEDGER_CONTENTION_RETRIES)
            retry.pause(attempt, base=0.004, cap=0.25)
            with timer.step():
                account = ledger.read_account(user_id)
            continue
        except (ledger.DuplicateEntry, ledger.ConditionFailed) as exc:
            if isinstance(exc, ledger.ConditionFailed) and exc.label.startswith(LIMIT_LABEL):
                if len(chunk.admitted) > 1:
                    one_by_one = chunk.taken  # nothing was written: one at a time now
                    continue
                # The one event admitted does not fit its limit's window: refused.
                scope = limits.scope_of(exc.label.removeprefix(LIMIT_LABEL))
                over = {id(p) for p in chunk.admitted}
                refused = [
                    (p, _over_limit(p, scope, int(account.quota)) if id(p) in over else result)
                    for p, result in chunk.decided
                ]
                _record_results(refused, results, now)
                remaining = remaining[chunk.taken :]
                one_by_one = max(0, one_by_one - chunk.taken)
                continue
            # A usage record of the chunk exists already or changed under us: read them all
            # (one call), settle the events they decide, and retry the rest.
            attempt += 1
            if attempt >= MAX_ATTEMPTS:
                raise ledger.LedgerContention("usage records kept changing; try again") from None
            with timer.step():
                records = _read_records([p.request_id for p in chunk.admitted])
            settled: set[int] = set()
            for p in chunk.admitted:
                final = _resolve(p, records.get(p.request_id), now)
                if final is not None:
                    results[p.index] = final
                    settled.add(p.index)
            remaining = [p for p in remaining if p.index not in settled]
            continue
        _record_results(chunk.decided, results, now)
        account = applied.accounts[user_id]
        remaining = remaining[chunk.taken :]
        one_by_one = max(0, one_by_one - chunk.taken)


def _record_results(
    decided: Sequence[tuple[_Pending, Result]], results: list[Result | None], now: datetime | None
) -> None:
    """Final results of a decided chunk.

    A charge or reserve refused for the balance may be the repeat of one that was applied
    (and paid for) before: its record says so, and then its answer is the first result.
    """
    unread = [
        p
        for p, result in decided
        if result["status"] == Status.REJECTED and not p.prefetch and p.record is None
    ]
    records = _read_records([p.request_id for p in unread]) if unread else {}
    for p, result in decided:
        record = records.get(p.request_id)
        final = _resolve(p, record, now) if record is not None else None
        results[p.index] = final or result


# ---------------------------------------------------------------- admission of a chunk


class _Chunk(NamedTuple):
    decided: list[tuple[_Pending, Result]]  # in input order: admitted and refused
    changes: list[ledger.Change]
    ops: list[ledger.TxOp]
    admitted: list[_Pending]  # the events with a usage record in the transaction
    taken: int  # how many of the remaining events the chunk decides


def _admit(
    account: Account,
    remaining: Sequence[_Pending],
    settings: Settings,
    now: datetime | None,
    *,
    single: bool = False,
) -> _Chunk:
    """Decide events in input order against the account as read, up to one transaction.

    The ledger checks that the available balance ends at or above zero whenever a chunk
    holds a debit or a new hold; a settle that would end it below zero therefore starts a
    new chunk when the current one holds such an item (the settle itself may go below).
    Spend limits in force add one counter update per window to the transaction (module
    billing.usage.limits); `single` admits one event only (after a limit refused a chunk).
    """
    moment = now or clock.now()
    at = clock.iso(moment)
    quota = int(account.quota)
    # Expired grants not yet written off cannot be spent (billing.grants): they count here
    # like a hold, so the availability checks below stay as they were.
    held = int(account.held_quota) + grant_math.unspendable(
        ledger.account_grants(account, int(moment.timestamp())), int(moment.timestamp())
    )
    decided: list[tuple[_Pending, Result]] = []
    ops: list[ledger.TxOp] = []
    admitted: list[_Pending] = []
    charged: list[_Pending] = []
    settled: list[_Pending] = []
    charge_sum = settle_sum = settle_holds = hold_delta = 0
    floor_checked = False
    taken = 0
    in_force = limits.stored_limits(account.limits)
    moves = limits.CounterMoves()
    shards = settings.usage.user_shards
    for p in remaining:
        if single and admitted:
            break
        counted = _counted(p, in_force, moment)
        if len(ops) + 1 + moves.keys_after(counted) > MAX_RECORDS_PER_TRANSACTION:
            break
        event = p.event
        result: Result
        if event.action in (Action.CHARGE, Action.RESERVE):
            assert p.quote is not None
            amount = p.quote.quota
            if amount > 0 and quota - held - amount < 0:
                decided.append((p, _insufficient(p, amount, quota)))
                taken += 1
                continue
            over = [key for key, limit in counted.items() if amount > limit.max_quota]
            if over:
                # More than the limit allows in a whole window: refused without a write.
                decided.append((p, _over_limit(p, limits.scope_of(over[0]), quota)))
                taken += 1
                continue
            if amount > 0:
                for key, limit in counted.items():
                    moves.add(key, amount, limit=limit.max_quota)
                p.counters = list(counted)
        else:
            amount = _counter_delta(p)
            if amount:
                for key in counted:
                    moves.add(key, amount)
            p.counters = list(counted)
        if event.action is Action.CHARGE:
            assert p.quote is not None
            price = p.quote.quota
            quota -= price
            charge_sum += price
            charged.append(p)
            floor_checked = floor_checked or price > 0
            result = _result(p, Status.CHARGED, price, quota)
            ops.append(_new_record(p, shards, Status.CHARGED, result, at, quota=price))
        elif event.action is Action.RESERVE:
            assert p.quote is not None
            hold = p.quote.quota
            held += hold
            hold_delta += hold
            floor_checked = floor_checked or hold > 0
            expires_at = clock.iso(moment + timedelta(seconds=settings.limits.hold_ttl_seconds))
            result = {**_result(p, Status.RESERVED, hold, quota), "expires_at": expires_at}
            ops.append(
                _new_record(
                    p, shards, Status.RESERVED, result, at, hold=hold, expires_at=expires_at
                )
            )
        elif event.action is Action.SETTLE:
            assert p.quote is not None
            actual = p.quote.quota
            if floor_checked and (quota - actual) - (held - p.hold) < 0:
                break  # written in the next chunk, after this one's debits
            quota -= actual
            held -= p.hold
            settle_sum += actual
            settle_holds += p.hold
            settled.append(p)
            result = _result(p, Status.SETTLED, actual, quota)
            if p.record is None:
                # The settle came before its reserve: the usage is billed with no hold.
                ops.append(_new_record(p, shards, Status.SETTLED, result, at, quota=actual))
            else:
                ops.append(_settle_record(p, shards, result, at))
        else:
            held -= p.hold
            hold_delta -= p.hold
            result = _result(p, Status.RELEASED, p.hold, quota)
            if p.record is None:
                # The release came before its reserve: a closed record, so that the late
                # reserve holds nothing.
                ops.append(_tombstone(p, shards, result, at))
            else:
                ops.append(_release_record(p, shards, result, at))
        decided.append((p, result))
        admitted.append(p)
        taken += 1

    user_id = account.user_id
    changes: list[ledger.Change] = []
    if charged:
        changes.append(
            _usage_change(
                user_id,
                Action.CHARGE,
                charged,
                charge_sum,
                counters={
                    "used_quota": charge_sum,
                    "request_count": len(charged),
                },
            )
        )
    if settled:
        changes.append(
            _usage_change(
                user_id,
                Action.SETTLE,
                settled,
                settle_sum,
                may_go_negative=True,
                counters={
                    "used_quota": settle_sum,
                    "request_count": len(settled),
                    "held_quota": -settle_holds,
                },
            )
        )
    if hold_delta or (ops and not changes):
        changes.append(
            ledger.Change(user_id=user_id, entry_id=None, counters={"held_quota": hold_delta})
        )
    ops.extend(_counter_op(user_id, move) for move in moves.moves.values())
    return _Chunk(decided, changes, ops, admitted, taken)


# ---------------------------------------------------------------- spend limits

LIMIT_LABEL = "limit:"


def _reserved(p: _Pending) -> bool:
    """Whether p closes an open hold (whose record says which counters it counted in)."""
    return p.record is not None and p.from_status == Status.RESERVED.value


def _counted(
    p: _Pending, in_force: Mapping[str, limits.Limit], moment: datetime
) -> dict[str, limits.Limit]:
    """The counters p moves (by counter key; the limit matters for charges and reserves).

    A settle or release of a hold moves the counters its reserve counted in, whatever the
    limits are now; anything else counts in the windows in force now."""
    action = p.event.action
    if action is Action.RELEASE or (action is Action.SETTLE and _reserved(p)):
        if not _reserved(p):
            return {}  # a release with no hold counts nothing
        assert p.record is not None
        return {str(key): limits.Limit("", 0, "total") for key in p.record.limit_counters or []}
    return limits.limits_in_force(in_force, p.event.key_id, moment)


def _counter_delta(p: _Pending) -> int:
    """A settle's or release's move of its counters (no condition: the usage happened)."""
    if p.event.action is Action.RELEASE:
        return -p.hold
    return _price(p) - p.hold


def _counter_op(user_id: str, move: limits.CounterMove) -> ledger.TxOp:
    actions: list[Any] = [
        LimitCounter.spent.add(move.total),
        LimitCounter.user_id.set(user_id),
        LimitCounter.counter.set(move.key),
    ]
    expires_at = limits.counter_expiry(move.key)
    if expires_at is not None:
        actions.append(LimitCounter.expires_at.set(expires_at))
    bound = move.bound
    condition = None
    if bound is not None:
        # An absent counter is an empty window: it fits when the bound is not negative.
        condition = LimitCounter.spent <= bound
        if bound >= 0:
            condition = LimitCounter.spent.does_not_exist() | condition
    return ledger.TxOp(
        label=LIMIT_LABEL + move.key,
        op="update",
        model=LimitCounter(limit_window_key(user_id, move.key)),
        condition=condition,
        actions=actions,
    )


def _over_limit(p: _Pending, scope: str, balance: int) -> Result:
    return {
        **rejected(p.request_id, LimitExceeded(), quota=_price(p), balance=balance),
        "limit": scope,
    }


def _usage_change(
    user_id: str,
    action: Action,
    pendings: Sequence[_Pending],
    amount: int,
    *,
    counters: Mapping[ledger.Counter, int],
    may_go_negative: bool = False,
) -> ledger.Change:
    nonzero = {name: value for name, value in counters.items() if value}
    if amount == 0:
        # Free usage moves no balance: counters only, no ledger entry.
        return ledger.Change(
            user_id=user_id, entry_id=None, counters=nonzero, may_go_negative=may_go_negative
        )
    if len(pendings) == 1:
        entry_id, ref = f"usage#{pendings[0].request_id}", pendings[0].request_id
    else:
        # One entry for the chunk, named after its request ids: a replay of the same chunk
        # meets the same id.
        digest = hashlib.sha256(
            "\n".join([action.value, *(p.request_id for p in pendings)]).encode()
        ).hexdigest()[:32]
        entry_id, ref = f"usage#batch-{digest}", f"{len(pendings)} requests ({action.value})"
    return ledger.Change(
        user_id=user_id,
        entry_id=entry_id,
        kind=ledger.EntryKind.USAGE,
        delta=-amount,
        ref=ref,
        may_go_negative=may_go_negative,
        counters=nonzero,
    )


def _result(p: _Pending, status: Status, quota: int, balance: int) -> Result:
    return {"request_id": p.request_id, "status": status.value, "quota": quota, "balance": balance}


def _insufficient(p: _Pending, price: int, balance: int) -> Result:
    return rejected(p.request_id, InsufficientQuota(), quota=price, balance=balance)


def _price(p: _Pending) -> int:
    return p.quote.quota if p.quote is not None else 0


# ---------------------------------------------------------------- usage records


def hold_shard(request_id: str) -> str:
    """Holds spread over shards of the open_holds index, so no index key gets hot."""
    number = int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) % HOLD_SHARDS
    return f"h#{number}"


def _quote_fields(quote: pricing.Quote) -> dict[str, Any]:
    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    return {
        "model": quote.model,
        "group": quote.group,
        "model_ratio": text(quote.model_ratio),
        "completion_ratio": text(quote.completion_ratio),
        "group_ratio": text(quote.group_ratio),
        "model_price": text(quote.model_price),
    }


def _new_record(
    p: _Pending,
    shards: int,
    status: Status,
    result: Result,
    at: str,
    *,
    quota: int = 0,
    hold: int = 0,
    expires_at: str | None = None,
) -> ledger.TxOp:
    assert p.quote is not None
    record = UsageRecord(
        request_id=p.request_id,
        user_id=p.event.user_id,
        user_shard=usage_user_shard(p.event.user_id, p.request_id, shards),
        prompt_tokens=p.event.prompt_tokens,
        completion_tokens=p.event.completion_tokens,
        quota=quota,
        hold_quota=hold,
        status=status.value,
        results={p.event.action.value: {**result, "attempt": p.attempt}},
        hold_shard=hold_shard(p.request_id) if expires_at else None,
        hold_expires_at=expires_at,
        key_id=p.event.key_id,
        limit_counters=p.counters or None,
        created_at=at,
        updated_at=at,
        **_quote_fields(p.quote),
    )
    return ledger.TxOp(
        label=f"usage:{p.request_id}",
        op="save",
        model=record,
        condition=UsageRecord.request_id.does_not_exist(),
    )


def _tombstone(p: _Pending, shards: int, result: Result, at: str) -> ledger.TxOp:
    """The record of a release that found no hold: released, nothing held or charged."""
    record = UsageRecord(
        request_id=p.request_id,
        user_id=p.event.user_id,
        user_shard=usage_user_shard(p.event.user_id, p.request_id, shards),
        model=p.event.model,
        group=p.event.group,
        prompt_tokens=p.event.prompt_tokens,
        completion_tokens=p.event.completion_tokens,
        quota=0,
        hold_quota=0,
        status=Status.RELEASED.value,
        results={p.event.action.value: {**result, "attempt": p.attempt}},
        key_id=p.event.key_id,
        created_at=at,
        updated_at=at,
    )
    return ledger.TxOp(
        label=f"usage:{p.request_id}",
        op="save",
        model=record,
        condition=UsageRecord.request_id.does_not_exist(),
    )


def _record_update(
    p: _Pending, shards: int, result: Result, at: str, status: Status, extra: list[Any]
) -> ledger.TxOp:
    assert p.record is not None
    if p.record.user_shard is None:
        # A record from before the index was sharded joins its shard (tools/migrate_usage_shards).
        extra = [
            *extra,
            UsageRecord.user_shard.set(usage_user_shard(p.event.user_id, p.request_id, shards)),
        ]
    stored = {**_stored_results(p.record), p.event.action.value: {**result, "attempt": p.attempt}}
    return ledger.TxOp(
        label=f"usage:{p.request_id}",
        op="update",
        model=p.record,
        # The hold must still be the one read: open (or expired) and this user's.
        condition=(UsageRecord.status == p.from_status) & (UsageRecord.user_id == p.event.user_id),
        actions=[
            UsageRecord.status.set(status.value),
            UsageRecord.results.set(stored),
            UsageRecord.hold_shard.remove(),
            UsageRecord.hold_expires_at.remove(),
            UsageRecord.updated_at.set(at),
            *extra,
        ],
    )


def _settle_record(p: _Pending, shards: int, result: Result, at: str) -> ledger.TxOp:
    assert p.quote is not None
    fields = _quote_fields(p.quote)
    actions: list[Any] = [
        UsageRecord.quota.set(p.quote.quota),
        UsageRecord.prompt_tokens.set(p.event.prompt_tokens),
        UsageRecord.completion_tokens.set(p.event.completion_tokens),
    ]
    if p.counters:
        actions.append(UsageRecord.limit_counters.set(p.counters))  # type: ignore[arg-type]
    for name, value in fields.items():
        attribute = getattr(UsageRecord, name)
        actions.append(attribute.remove() if value is None else attribute.set(value))
    return _record_update(p, shards, result, at, Status.SETTLED, actions)


def _release_record(p: _Pending, shards: int, result: Result, at: str) -> ledger.TxOp:
    status = Status.EXPIRED if p.expire else Status.RELEASED
    return _record_update(p, shards, result, at, status, [])


def _stored_results(record: UsageRecord) -> dict[str, Result]:
    raw = record.results
    values = raw.as_dict() if isinstance(raw, MapAttribute) else dict(raw or {})
    return {str(action): plain_json(result) for action, result in values.items()}


def plain_json(value: Any) -> Any:
    """A stored result as plain JSON values (DynamoDB numbers may come back as Decimal)."""
    if isinstance(value, MapAttribute):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_json(item) for item in value]
    if isinstance(value, float | Decimal) and value == int(value):
        return int(value)
    return value


def _duplicate(first: Result) -> Result:
    return {**first, "status": Status.DUPLICATE.value, "first_status": first["status"]}


# The action whose stored result closed a record of each closed status.
_CLOSED_BY = {
    Status.SETTLED.value: Action.SETTLE.value,
    Status.RELEASED.value: Action.RELEASE.value,
    Status.EXPIRED.value: Action.RELEASE.value,
}


def _resolve(p: _Pending, record: UsageRecord | None, now: datetime | None) -> Result | None:
    """The final result of p given its usage record, or None when p should go ahead.

    Also loads into p what a settle or release needs (the hold and the status to expect).
    """
    action = p.event.action
    p.record = record
    if record is None:
        if p.expire:
            return rejected(p.request_id, InvalidEvent("No hold exists for this request_id."))
        # A first action. A settle or release with no hold before it goes ahead too: the
        # settle bills the usage in full, the release closes the request_id.
        p.hold = 0
        return None
    if record.user_id != p.event.user_id:
        # Another user's request_id: say nothing about it.
        return rejected(p.request_id, InvalidEvent("The request_id is already in use."))
    stored = _stored_results(record)
    first = stored.get(action.value)
    if first is not None:
        if first.pop("attempt", None) == p.attempt:
            return first  # our own write, whose acknowledgement was lost: not a duplicate
        return _duplicate(first)
    status = record.status
    if action is Action.CHARGE or status == Status.CHARGED:
        # A charge is a request of its own: it never mixes with holds.
        return rejected(
            p.request_id, InvalidEvent(f"The request_id was already used to {status} usage.")
        )
    if status == Status.RESERVED:
        if p.expire and (record.hold_expires_at or "") >= clock.iso(now):
            return rejected(p.request_id, InvalidEvent("The hold has not expired."))
        p.hold = int(record.hold_quota)
        p.from_status = Status.RESERVED.value
        return None
    closing = stored.get(_CLOSED_BY.get(status, ""))
    if action is Action.SETTLE and status in (Status.RELEASED, Status.EXPIRED):
        # The hold was dropped (or never placed) but the usage happened: bill all of it.
        p.hold = 0
        p.from_status = status
        return None
    if closing is not None:
        # A reserve or release after the request_id was closed changes nothing.
        closing.pop("attempt", None)
        return _duplicate(closing)
    return rejected(
        p.request_id, InvalidEvent(f"The hold of this request_id is {status}, not open.")
    )


def answered(record: UsageRecord, event: UsageEvent) -> Result | None:
    """The `duplicate` answer when the record already holds this user's first result of this
    action (the event is a repeat), else None."""
    if record.user_id != event.user_id:
        return None
    first = _stored_results(record).get(event.action.value)
    if first is None:
        return None
    first.pop("attempt", None)
    return _duplicate(first)


def billed_result(record: UsageRecord) -> Result | None:
    """The result that billed a charged or settled record (None for any other status)."""
    action = {Status.CHARGED.value: Action.CHARGE, Status.SETTLED.value: Action.SETTLE}.get(
        record.status
    )
    if action is None:
        return None
    result = _stored_results(record).get(action.value)
    if result is not None:
        result.pop("attempt", None)
    return result


# ---------------------------------------------------------------- reads


def read_records(request_ids: Sequence[str]) -> dict[str, UsageRecord]:
    """The usage records of these request_ids (consistent reads), by request_id."""
    return _read_records(request_ids)


def _read_records(request_ids: Sequence[str]) -> dict[str, UsageRecord]:
    if not request_ids:
        return {}
    if len(request_ids) == 1:
        try:
            record = UsageRecord.get(request_ids[0], consistent_read=True)
        except UsageRecord.DoesNotExist:
            return {}
        return {record.request_id: record}
    return {
        record.request_id: record
        for record in _batch(
            UsageRecord.batch_get(list(dict.fromkeys(request_ids)), consistent_read=True)
        )
    }


def _read_accounts(user_ids: Sequence[str]) -> dict[str, Account]:
    if not user_ids:
        return {}
    if len(user_ids) == 1:
        try:
            return {user_ids[0]: ledger.read_account(user_ids[0])}
        except AccountNotFound:
            return {}
    return {
        account.user_id: account
        for account in _batch(Account.batch_get(list(user_ids), consistent_read=True))
    }


def _batch(items: Iterator[Any]) -> list[Any]:
    return list(items)
