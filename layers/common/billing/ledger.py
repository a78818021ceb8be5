"""The ledger: the single path through which every quota change goes.

`apply` writes, in ONE DynamoDB transaction, each account's new balances (conditional on the
account's version, so a concurrent change forces a re-read instead of being overwritten), one
ledger entry per change under `attribute_not_exists` with an id derived from its cause (so a
cause applies at most once), and any extra items the caller adds (an order's status change, a
code's use counter, a usage record). Either all of it happens or none of it does, so the
ledger always sums to the balance.

Reading the account first gives every entry an exact `balance_after` and lets the floor
checks (no balance below zero, holds included) happen before the write; the version condition
makes the read-then-write safe under any concurrency.

Quota is held as credit grants on the account item (billing.grants): a credit creates one
(and its history record, in the same transaction), a debit draws from them in the documented
order, and the entry records the per-grant deltas (`grants`). An account made before grants
existed gets its baseline grant (its quota as one `paid` grant) with its first change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from pynamodb.attributes import MapAttribute
from pynamodb.exceptions import DoesNotExist, TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from billing import clock, db, metrics, retry
from billing import grants as grant_math
from billing.errors import AccountNotFound
from billing.facts import EntryKind as EntryKind  # re-exported: ledger.EntryKind
from billing.models import Account, GrantRecord, LedgerEntry

Balance = Literal["quota", "aff_quota"]
# Account counters a change may move besides its balance (absolute values are written).
Counter = Literal[
    "used_quota", "request_count", "held_quota", "aff_history_quota", "aff_count", "paid_orders"
]
_COUNTERS: tuple[Counter, ...] = (
    "used_quota",
    "request_count",
    "held_quota",
    "aff_history_quota",
    "aff_count",
    "paid_orders",
)

MAX_ATTEMPTS = 30
_NO_COUNTERS: Mapping[Counter, int] = MappingProxyType({})


# The grant source of a credit, unless the change names its own terms.
SOURCE_OF_KIND: dict[str, str] = {
    EntryKind.TOPUP: "paid",
    EntryKind.REDEEM: "code",
    EntryKind.REFERRAL_TRANSFER: "referral",
    EntryKind.SIGNUP_BONUS: "bonus",
    EntryKind.ADJUSTMENT: "adjustment",
}


class Change(NamedTuple):
    """One cause's effect on one account (checked by `apply`, before anything is written).

    entry_id None means no ledger entry (a change that moves only counters, e.g. a hold);
    it is then not allowed to move a balance.
    """

    user_id: str
    entry_id: str | None
    kind: EntryKind | None = None
    delta: int = 0
    balance: Balance = "quota"
    ref: str = ""
    # Settled usage and reversals of credits may take a balance below zero; nothing else may.
    may_go_negative: bool = False
    counters: Mapping[Counter, int] = _NO_COUNTERS
    # A credit's grant terms (default: the source of its kind, priority 50, no expiry).
    grant: grant_math.Terms | None = None
    # A debit that takes from this grant first (a refund: its order's paid grant).
    own_grant: str | None = None
    # An `expiry` entry: the grant it writes off (delta = -its remaining).
    expire_grant: str | None = None


def _check(change: Change) -> None:
    if not isinstance(change.delta, int) or isinstance(change.delta, bool):
        raise TypeError("delta must be an int")
    if change.entry_id is None and change.delta:
        raise ValueError("a balance change needs a ledger entry")
    if change.entry_id is not None and change.kind is None:
        raise ValueError("a ledger entry needs a kind")


class TxOp(NamedTuple):
    """An extra item of the transaction, labelled so its failure can be reported."""

    label: str
    op: Literal["condition_check", "delete", "save", "update"]
    model: Model | type[Model]
    condition: Condition | None = None
    actions: Sequence[Action] = ()
    hash_key: Any = None
    range_key: Any = None


class Applied(NamedTuple):
    entries: list[LedgerEntry]
    accounts: dict[str, Account]


class LedgerError(Exception):
    pass


class DuplicateEntry(LedgerError):
    """The cause was applied before: nothing was written now."""

    def __init__(self, entry_id: str):
        super().__init__(entry_id)
        self.entry_id = entry_id


class ConditionFailed(LedgerError):
    """An extra item's condition failed (e.g. the order is no longer pending)."""

    def __init__(self, label: str):
        super().__init__(label)
        self.label = label


class InsufficientBalance(LedgerError):
    def __init__(self, user_id: str, balance: Balance, available: int):
        super().__init__(f"{balance} of {user_id} is too low")
        self.user_id = user_id
        self.balance = balance
        self.available = available


class LedgerContention(LedgerError):
    """The account kept changing under us; the caller may retry later (retryable)."""


def read_account(user_id: str) -> Account:
    try:
        return Account.get(user_id, consistent_read=True)
    except DoesNotExist as exc:
        raise AccountNotFound() from exc


def apply(
    changes: Sequence[Change],
    extra: Sequence[TxOp] = (),
    *,
    accounts: Mapping[str, Account] | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> Applied:
    """Apply the changes and extra items atomically, retrying on concurrent account changes.

    `accounts` may hold accounts the caller has just read (e.g. in one TransactGetItems), to
    save a read; they are re-read on a retry. A caller whose extra items were computed from
    the accounts it read (e.g. usage records carrying the balance after) passes
    `max_attempts=1`: a concurrent change then raises LedgerContention at once, so it can
    re-read and rebuild them instead of writing stale ones.
    """
    if not changes:
        raise ValueError("nothing to apply")
    for change in changes:
        _check(change)
    known: dict[str, Account] = dict(accounts or {})
    for attempt in range(max_attempts):
        current = {
            user_id: known.get(user_id) or read_account(user_id)
            for user_id in dict.fromkeys(change.user_id for change in changes)
        }
        known = {}
        try:
            return _write(changes, extra, current)
        except _Conflict:
            if attempt + 1 == max_attempts:
                break
            # Another change won the race for the account: back off with jitter, re-read.
            metrics.count(metrics.Metric.LEDGER_CONTENTION_RETRIES)
            retry.pause(attempt, base=0.005, cap=0.2)
    raise LedgerContention("the account kept changing; try again")


class _Conflict(Exception):
    pass


_BALANCE_FIELDS: tuple[str, ...] = ("quota", "aff_quota")


def account_grants(account: Account, now: int) -> dict[str, grant_math.Grant]:
    """The account's grants; for an account made before grants existed, its baseline."""
    if account.grants is None:
        created = (
            int(clock.parse_iso(account.created_at).timestamp()) if account.created_at else now
        )
        return grant_math.baseline(account.user_id, int(account.quota), created)
    return grant_math.decode(_plain_map(account.grants))


def _plain_map(raw: Any) -> dict[str, Any]:
    if isinstance(raw, MapAttribute):
        raw = raw.as_dict()
    return {
        str(key): _plain_map(value) if isinstance(value, Mapping | MapAttribute) else value
        for key, value in dict(raw or {}).items()
    }


def _grant_effect(
    change: Change, held: dict[str, grant_math.Grant], now: int, at: str
) -> tuple[dict[str, int], dict[str, grant_math.Grant], GrantRecord | None]:
    """The per-grant deltas of a quota change, the grants after it, and the history record
    of the grant a credit creates."""
    assert change.entry_id is not None
    if change.kind == EntryKind.EXPIRY:
        grant_id = change.expire_grant
        grant = held.get(grant_id or "")
        if grant is None:
            raise DuplicateEntry(change.entry_id)  # written off (or gone) already
        if not grant.expired(now) or -grant.remaining != change.delta:
            raise ValueError("an expiry writes off exactly the remainder of an expired grant")
        after, delta = grant_math.expire(held, grant.grant_id)
        return {grant.grant_id: delta}, after, None
    if change.delta < 0:
        deltas = grant_math.debit(held, -change.delta, now, change.own_grant)
        return deltas, grant_math.apply_deltas(held, deltas, now), None
    terms = change.grant or grant_math.Terms(SOURCE_OF_KIND.get(str(change.kind), "adjustment"))
    grant_id = grant_math.grant_id_for(change.entry_id)
    if grant_id in held:
        raise DuplicateEntry(change.entry_id)
    new = grant_math.Grant(
        grant_id,
        terms.source,
        change.delta,
        change.delta,
        terms.priority,
        terms.expires_at,
        now,
    )
    credited = grant_math.credit(held, new, now)
    expiring = terms.expires_at is not None and credited.merged_into is None
    record = GrantRecord(
        user_id=change.user_id,
        grant_id=grant_id,
        created_key=f"{at}#{grant_id}",
        source=terms.source,
        amount=change.delta,
        priority=terms.priority,
        expires_at=terms.expires_at,
        ref=change.entry_id,
        created_at=at,
        merged_into=credited.merged_into,
        expiry_shard=expiry_shard(grant_id) if expiring else None,
        due_at=terms.expires_at if expiring else None,
    )
    return credited.deltas, credited.grants, record


EXPIRY_SHARDS = 10


def expiry_shard(grant_id: str) -> str:
    """Expiring grants spread over shards of the `expiring` index, so no index key gets hot."""
    number = int(hashlib.sha256(grant_id.encode()).hexdigest()[:8], 16) % EXPIRY_SHARDS
    return f"e#{number}"


def _write(
    changes: Sequence[Change], extra: Sequence[TxOp], current: Mapping[str, Account]
) -> Applied:
    moment = clock.now()
    at = clock.iso(moment)
    now = int(moment.timestamp())
    held_grants = {user_id: account_grants(account, now) for user_id, account in current.items()}
    records: list[GrantRecord] = []
    new_values: dict[str, dict[str, int]] = {
        user_id: {name: int(getattr(account, name)) for name in (*_BALANCE_FIELDS, *_COUNTERS)}
        for user_id, account in current.items()
    }
    entries: list[LedgerEntry] = []
    position: dict[str, int] = {}
    for change in changes:
        values = new_values[change.user_id]
        values[change.balance] += change.delta
        for name, amount in change.counters.items():
            values[name] += amount
        if change.entry_id is None:
            continue
        entry_grants: dict[str, int] | None = None
        if change.balance == "quota" and change.delta:
            entry_grants, held_grants[change.user_id], record = _grant_effect(
                change, held_grants[change.user_id], now, at
            )
            if record is not None:
                records.append(record)
        version = int(current[change.user_id].version) + 1
        index = position.get(change.user_id, 0)
        position[change.user_id] = index + 1
        entries.append(
            LedgerEntry(
                user_id=change.user_id,
                entry_id=change.entry_id,
                seq=f"{version:015d}.{index:03d}",
                kind=str(change.kind),
                balance=change.balance,
                delta=change.delta,
                balance_after=values[change.balance],
                ref=change.ref,
                created_at=at,
                grants=entry_grants,
            )
        )
    frozen = {
        user_id: grant_math.unspendable(grants, now) for user_id, grants in held_grants.items()
    }
    _check_floors(changes, new_values, frozen)

    labels: dict[str, list[str]] = {"condition_check": [], "delete": [], "save": [], "update": []}
    updated: dict[str, Account] = {}
    try:
        with TransactWrite(connection=db.connection()) as transaction:
            for op in extra:
                _add(transaction, op)
                labels[op.op].append(op.label)
            for entry in entries:
                transaction.save(entry, condition=LedgerEntry.entry_id.does_not_exist())
                labels["save"].append(f"entry:{entry.entry_id}")
            for record in records:
                # Written once: the credit's entry (same transaction) is the guard.
                transaction.save(record)
                labels["save"].append(f"grant:{record.grant_id}")
            for user_id, account in current.items():
                values = new_values[user_id]
                version = int(account.version)
                actions: list[Action] = [
                    getattr(Account, name).set(value)
                    for name, value in values.items()
                    if value != int(getattr(account, name))
                ]
                encoded = grant_math.encode(held_grants[user_id])
                if account.grants is None or encoded != _plain_map(account.grants):
                    actions.append(Account.grants.set(encoded))
                actions += [Account.version.set(version + 1), Account.updated_at.set(at)]
                transaction.update(account, actions=actions, condition=Account.version == version)
                labels["update"].append(f"account:{user_id}")
                updated[user_id] = _updated_copy(account, values, version + 1, at, encoded)
    except TransactWriteError as exc:
        # PynamoDB sends condition checks, deletes, puts, then updates, whatever the order
        # they were added in; cancellation reasons follow that order.
        order = [
            label
            for kind in ("condition_check", "delete", "save", "update")
            for label in labels[kind]
        ]
        _raise_for(exc, order)
    return Applied(entries=entries, accounts=updated)


def _check_floors(
    changes: Iterable[Change],
    values: Mapping[str, Mapping[str, int]],
    frozen: Mapping[str, int],
) -> None:
    """After a charge or a hold: spendable - held >= 0 (expired grants cannot be spent)."""
    for change in changes:
        if change.may_go_negative:
            continue
        after = values[change.user_id]
        if change.balance == "quota" and (
            change.delta < 0 or change.counters.get("held_quota", 0) > 0
        ):
            available = after["quota"] - frozen.get(change.user_id, 0) - after["held_quota"]
            if available < 0:
                raise InsufficientBalance(change.user_id, "quota", available - change.delta)
        if change.balance == "aff_quota" and change.delta < 0 and after["aff_quota"] < 0:
            raise InsufficientBalance(
                change.user_id, "aff_quota", after["aff_quota"] - change.delta
            )


def _add(transaction: TransactWrite, op: TxOp) -> None:
    if op.op == "condition_check":
        assert isinstance(op.model, type) and op.condition is not None
        transaction.condition_check(op.model, op.hash_key, op.range_key, condition=op.condition)
    elif op.op == "delete":
        assert isinstance(op.model, Model)
        transaction.delete(op.model, condition=op.condition)
    elif op.op == "save":
        assert isinstance(op.model, Model)
        transaction.save(op.model, condition=op.condition)
    else:
        assert isinstance(op.model, Model)
        transaction.update(op.model, actions=list(op.actions), condition=op.condition)


def _raise_for(exc: TransactWriteError, labels: list[str]) -> None:
    # A transport error (e.g. a read timeout) carries no response: not a cancellation.
    if getattr(exc, "cause_response_code", None) != "TransactionCanceledException":
        raise exc
    reasons = exc.cancellation_reasons
    failed = [
        (label, reason.code)
        for label, reason in zip(labels, reasons, strict=False)
        if reason is not None and reason.code not in (None, "None")
    ]
    for label, code in failed:
        if code == "ConditionalCheckFailed" and label.startswith("entry:"):
            raise DuplicateEntry(label.removeprefix("entry:")) from exc
    for label, code in failed:
        if code == "ConditionalCheckFailed" and not label.startswith(("entry:", "account:")):
            raise ConditionFailed(label) from exc
    # A version mismatch or a concurrent transaction on one of the items: re-read and retry.
    if all(code in ("ConditionalCheckFailed", "TransactionConflict") for _, code in failed):
        raise _Conflict() from exc
    raise exc


def _updated_copy(
    account: Account,
    values: Mapping[str, int],
    version: int,
    at: str,
    grants: dict[str, Any],
) -> Account:
    copy = Account(**{name: getattr(account, name) for name in Account.get_attributes()})
    for name, value in values.items():
        setattr(copy, name, value)
    copy.grants = grants
    copy.version = version
    copy.updated_at = at
    return copy
