"""Reconciliation: every balance against its ledger, every order against its ledger entries,
every redemption code against its redemptions. Read-only, streamed, through the models.

It never repairs anything: it returns the differences, and an operator decides. It reads in
four passes, each page by page, so memory holds one page and one account at a time plus two
small tallies (redemptions per redeemed code, invitations per inviter), never a table:
1. accounts (Scan, consistent). Per account: its ledger (consistent Query of the base
   table), its orders (the orders table's by_user index plus the orders its entries name,
   then consistent reads) and its usage records (every shard of the usage table's
   by_user_shard index); then the per-account checks below.
2. the ledger (Scan, keys and amounts): entries of accounts that do not exist; the
   redemptions of each code.
3. the codes (Scan, consistent): uses against redemptions (`code_uses`).
4. the orders (Scan): credited orders of accounts that do not exist.

Checks, per account:
- `ledger_sum`: the deltas of each balance (quota, aff_quota) sum to the balance;
- `balance_after`: in ledger order (seq), each entry's balance_after is the running sum;
- `negative`: a debit that leaves a balance below zero is a settle (usage) or a reversal;
- `aff_kind`: aff_quota moves only by referral rebate (and the inviter's bonus for an
  invitee's first order), clawback (reversal) and transfer, and the two sides of a transfer
  cancel out; aff_history_quota is what the rebates and bonuses less clawbacks came to (a
  clawback of what was already transferred is taken from quota: `<clawback id>#quota`);
- `entry_kind`: every entry has a known kind matching its id's cause prefix;
- `usage`: used_quota, request_count and held_quota agree with the usage records, and
  used_quota with the usage entries; `paid_orders` with the top-up entries; `aff_count` with
  the accounts that name this one as their inviter;
- `order_credit`: a paid order, or a refunded/disputed one that had been paid, has exactly one
  `topup#<order>` of its quota on its user's ledger; a pending/failed/expired one (or one
  closed before it was paid) has none; its reversal steps (`reversal#<order>#<step>`) take
  back, together, the refunded share of its quota: floor(quota x refunded_money / pay_money)
  while it is paid, all of it once it is refunded or disputed after it was paid, nothing
  otherwise; no top-up/reversal entry without its order;
- `referral_reward`: a rebate entry names a credited order of a user this account invited;
and per redemption code (`code_uses`): `uses` equals the number of `redeem#<code>#<user>`
entries, each of the code's quota, and never exceeds `max_uses`.

Like with like. An account is read before and after its ledger, orders and usage records:
when its version (bumped by every ledger transaction) is the same, they are of one moment.
When the account keeps changing, its balance checks still run, at the version read first
(an entry's seq starts with the version it was written at, so the ledger as of version v is
exactly the entries at or below v); its order and usage checks wait for a re-check.
An index is never read consistently, and the usage records come from one: when they
disagree with the counters, the records found are read again from the table (consistent),
and a difference that remains counts only if the account had been quiet for longer than the
index lag when the index was read (otherwise a record may just not be in the index yet).

Every suspect is re-checked from fresh reads `rechecks` times, `pause` apart; what persists
is reported. What cannot be settled because its account or code never stopped changing is
listed as unverified, never reported as a difference.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, NamedTuple

from pynamodb.attributes import MapAttribute
from pynamodb.exceptions import DoesNotExist
from pynamodb.models import Model

from billing import clock, retry
from billing.facts import BILLED_USAGE_STATUSES, EntryKind, OrderStatus, UsageStatus
from billing.grant_checks import grant_problems
from billing.models import (
    Account,
    LedgerEntry,
    Order,
    RedemptionCode,
    UsageRecord,
    usage_of_user,
)
from billing.settings import load_settings

KINDS = frozenset(EntryKind)
# Cause prefix of an entry id -> the kinds it may carry.
PREFIX_KINDS: dict[str, frozenset[str]] = {
    "topup": frozenset({EntryKind.TOPUP}),
    "reversal": frozenset({EntryKind.REVERSAL}),
    "redeem": frozenset({EntryKind.REDEEM}),
    "usage": frozenset({EntryKind.USAGE}),
    "adjustment": frozenset({EntryKind.ADJUSTMENT}),
    "referral_reward": frozenset({EntryKind.REFERRAL_REWARD}),
    "referral_clawback": frozenset({EntryKind.REVERSAL}),
    "referral_transfer": frozenset({EntryKind.REFERRAL_TRANSFER}),
    "signup_bonus": frozenset({EntryKind.SIGNUP_BONUS}),
    "expiry": frozenset({EntryKind.EXPIRY}),
    "signup_bonus_reversal": frozenset({EntryKind.REVERSAL}),
}
# Clawbacks of an inviter's rewards: they lower aff_history_quota, also when they are taken
# from quota (`<id>#quota`) because the reward was already transferred to the balance.
CLAWBACK_PREFIXES = ("referral_clawback#", "signup_bonus_reversal#invitee#")
# The inviter's bonus on an invitee's first paid order is a rebate (kind signup_bonus).
AFF_KINDS = frozenset(
    {
        EntryKind.REFERRAL_REWARD,
        EntryKind.SIGNUP_BONUS,
        EntryKind.REFERRAL_TRANSFER,
        EntryKind.REVERSAL,
    }
)
# A debit may leave a balance below zero only when the usage already happened (settle) or
# when a credit is taken back (refund, dispute, clawback).
NEGATIVE_KINDS = {
    "quota": frozenset({EntryKind.USAGE, EntryKind.REVERSAL, EntryKind.EXPIRY}),
    "aff_quota": frozenset({EntryKind.REVERSAL}),
}

_BATCH_GET = 100  # BatchGetItem's limit
_READ_ATTEMPTS = 3  # reads of one account before it counts as busy


class Difference(NamedTuple):
    check: str
    subject: str  # "account:<user>", "order:<id>", "code:<id>"
    message: str
    expected: Any = None
    actual: Any = None
    scope: str = ""  # what a re-check must re-read: "user:<id>", "invites:<id>", "code:<id>"
    tentative: bool = False  # seen on reads that cannot settle it (a busy account, index lag)

    def as_dict(self) -> dict[str, Any]:
        data = self._asdict()
        data.pop("scope")
        data.pop("tentative")
        return data

    def as_log(self) -> dict[str, Any]:
        # "message" is reserved in a log record's extra fields.
        return {
            "check": self.check,
            "subject": self.subject,
            "detail": self.message,
            "expected": self.expected,
            "actual": self.actual,
        }

    def __str__(self) -> str:
        found = ""
        if self.expected is not None or self.actual is not None:
            found = f" (expected {self.expected!r}, found {self.actual!r})"
        return f"[{self.check}] {self.subject}: {self.message}{found}"


class Tables(NamedTuple):
    accounts: str
    ledger: str
    orders: str
    usage: str | None = None
    codes: str | None = None
    # How many by_user_shard partitions hold a user's usage (settings usage.user_shards);
    # None: read from the settings document.
    usage_shards: int | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Tables:
        env = os.environ if environ is None else environ
        missing = [
            name for name in ("ACCOUNTS_TABLE", "LEDGER_TABLE", "ORDERS_TABLE") if not env.get(name)
        ]
        if missing:
            raise ValueError(f"table names missing from the environment: {', '.join(missing)}")
        return cls(
            accounts=env["ACCOUNTS_TABLE"],
            ledger=env["LEDGER_TABLE"],
            orders=env["ORDERS_TABLE"],
            usage=env.get("USAGE_TABLE") or None,
            codes=env.get("REDEMPTION_CODES_TABLE") or None,
        )


class Options(NamedTuple):
    rechecks: int = 2  # fresh re-reads of every suspect before it is reported
    pause: float = 2.0  # seconds before each round of re-checks (longer than the index lag)
    index_lag: float = 2.0  # how far behind its table an index may be
    deadline: float | None = None  # time.monotonic() by which the run must stop
    page_size: int | None = None  # items per Scan page (None: DynamoDB's 1 MB pages)


DEFAULT_OPTIONS = Options()


class Report(NamedTuple):
    differences: list[Difference]
    counts: dict[str, int]
    rechecked: int = 0  # suspects read again; those that vanished were transient
    unverified: Sequence[Difference] = ()  # never settled: kept changing
    complete: bool = True  # False: the run stopped at its deadline (see `stopped`)
    stopped: str = ""

    @property
    def clean(self) -> bool:
        return self.complete and not self.differences

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "complete": self.complete,
            "stopped": self.stopped,
            "differences": [d.as_dict() for d in self.differences],
            "unverified": [d.as_dict() for d in self.unverified],
            "counts": dict(self.counts),
            "rechecked": self.rechecked,
        }


# ---------------------------------------------------------------- binding the models


@contextmanager
def bound(
    tables: Tables,
    *,
    endpoint: str | None = None,
    credentials: tuple[str, str] | None = None,
    region: str | None = None,
) -> Iterator[None]:
    """The models pointed at `tables` (and an endpoint, region, credentials) for the
    duration, then restored: the command and the tests reconcile tables other than the
    environment's."""
    names: dict[type[Model], str | None] = {
        Account: tables.accounts,
        LedgerEntry: tables.ledger,
        Order: tables.orders,
        UsageRecord: tables.usage,
        RedemptionCode: tables.codes,
    }
    fields = ("table_name", "host", "region", "aws_access_key_id", "aws_secret_access_key")
    saved: dict[type[Model], dict[str, Any]] = {}
    for model, name in names.items():
        if name is None:
            continue
        meta = model.Meta
        wanted = {"table_name": name}
        if endpoint is not None:
            wanted["host"] = endpoint
        if region is not None:
            wanted["region"] = region
        if credentials is not None:
            wanted["aws_access_key_id"], wanted["aws_secret_access_key"] = credentials
        if all(getattr(meta, f, None) == value for f, value in wanted.items()):
            continue  # already so (the function's own tables): keep the warm connection
        saved[model] = {f: getattr(meta, f, None) for f in fields}
        for f, value in wanted.items():
            setattr(meta, f, value)
        model._connection = None  # a connection is bound to its table and endpoint
    try:
        yield
    finally:
        for model, values in saved.items():
            for f, value in values.items():
                setattr(model.Meta, f, value)
            model._connection = None


# ---------------------------------------------------------------- what is read


class Entry(NamedTuple):
    """What the checks need of a ledger entry (a model instance costs several times more)."""

    entry_id: str
    seq: str
    kind: str
    balance: str
    delta: int
    balance_after: int
    grants: dict[str, int] | None = None  # the entry's per-grant deltas (credit grants)

    @property
    def version(self) -> int:
        """The account version the entry was written at (its seq is "<version>.<index>")."""
        head = self.seq.split(".", 1)[0]
        return int(head) if head.isdigit() else -1

    @classmethod
    def of(cls, entry: LedgerEntry) -> Entry:
        return cls(
            entry_id=entry.entry_id,
            seq=str(entry.seq),
            kind=str(entry.kind),
            balance=str(entry.balance),
            delta=int(entry.delta),
            balance_after=int(entry.balance_after),
            grants=None if entry.grants is None else _grant_deltas(entry.grants),
        )


def _grant_deltas(raw: Any) -> dict[str, int]:
    plain = raw.as_dict() if isinstance(raw, MapAttribute) else dict(raw)
    return {str(grant_id): int(delta) for grant_id, delta in plain.items()}


class UsageTotals:
    """The usage records of one account, summed as its counters sum them."""

    __slots__ = ("held", "records", "requests", "used")

    def __init__(self, used: int = 0, requests: int = 0, held: int = 0, records: int = 0) -> None:
        self.used = used
        self.requests = requests
        self.held = held
        self.records = records

    def add(self, record: UsageRecord) -> None:
        self.records += 1
        if record.status in BILLED_USAGE_STATUSES:
            self.used += int(record.quota)
            self.requests += 1
        elif record.status == UsageStatus.RESERVED:
            self.held += int(record.hold_quota)

    def agrees_with(self, account: Account) -> bool:
        return (self.used, self.requests, self.held) == (
            int(account.used_quota),
            int(account.request_count),
            int(account.held_quota),
        )


class UserState(NamedTuple):
    """What the per-account checks look at, for one user."""

    account: Account | None
    entries: list[Entry]
    orders: list[Order] | None  # None: the account kept changing (not compared)
    usage: UsageTotals | None = None  # None: no usage table, or not compared
    usage_settled: bool = True  # the usage index had caught up with the account
    busy: bool = False  # kept changing: only the balance checks ran (at one version)


def _account(user_id: str) -> Account | None:
    try:
        return Account.get(user_id, consistent_read=True)
    except DoesNotExist:
        return None


def _batch_get(model: type[Model], keys: Iterable[str], **kwargs: Any) -> Iterator[Any]:
    """Consistent BatchGetItem in chunks (PynamoDB re-sends unprocessed keys itself)."""
    chunk: list[str] = []
    for key in dict.fromkeys(keys):
        chunk.append(key)
        if len(chunk) == _BATCH_GET:
            yield from model.batch_get(chunk, consistent_read=True, **kwargs)
            chunk = []
    if chunk:
        yield from model.batch_get(chunk, consistent_read=True, **kwargs)


def _ledger(user_id: str) -> list[Entry]:
    entries = [Entry.of(e) for e in LedgerEntry.query(user_id, consistent_read=True)]
    entries.sort(key=lambda e: e.seq)
    return entries


def _orders(user_id: str, entries: Iterable[Entry]) -> list[Order]:
    ids = [o.order_id for o in Order.by_user.query(user_id, attributes_to_get=["order_id"])]
    # The top-up and reversal entries name orders too (the index may lag behind its table).
    ids += [order_id for e in entries if (order_id := order_of(e.entry_id)) is not None]
    return [o for o in _batch_get(Order, ids) if o.user_id == user_id]


def _usage_shards(shards: int | None) -> int:
    return shards if shards is not None else load_settings().usage.user_shards


def _usage_from_index(user_id: str, shards: int | None) -> UsageTotals:
    totals = UsageTotals()
    for record in usage_of_user(user_id, _usage_shards(shards)):
        totals.add(record)
    return totals


def _usage_fresh(user_id: str, shards: int | None) -> UsageTotals:
    """The records the index names, each read again from the table (current status)."""
    totals = UsageTotals()
    ids = (
        r.request_id
        for r in usage_of_user(user_id, _usage_shards(shards), attributes_to_get=["request_id"])
    )
    for record in _batch_get(UsageRecord, ids):
        totals.add(record)
    return totals


def _version(account: Account | None) -> int | None:
    return None if account is None else int(account.version)


def _quiet_since(account: Account) -> float | None:
    """Epoch seconds of the account's last ledger transaction (None: not recorded)."""
    stamp = account.updated_at or account.created_at
    try:
        return clock.parse_iso(stamp).timestamp() if stamp else None
    except ValueError:
        return None


def read_user(
    user_id: str,
    *,
    usage: bool,
    index_lag: float,
    first: Account | None = None,
    usage_shards: int | None = None,
) -> UserState:
    """One user's account, ledger, orders and usage, read so that they agree in time (see the
    module's docstring); `first` is the account as a scan just read it."""
    before = first
    entries: list[Entry] = []
    for attempt in range(_READ_ATTEMPTS):
        if before is None or attempt:
            before = _account(user_id)
        entries = _ledger(user_id)
        orders = _orders(user_id, entries)
        totals: UsageTotals | None = None
        index_read_at = time.time()
        if usage:
            totals = _usage_from_index(user_id, usage_shards)
            if before is not None and not totals.agrees_with(before):
                totals = _usage_fresh(user_id, usage_shards)
        after = _account(user_id)
        if _version(before) == _version(after):
            quiet = None if after is None else _quiet_since(after)
            settled = quiet is None or index_read_at - quiet >= index_lag
            return UserState(after, entries, orders, totals, usage_settled=settled)
        retry.pause(attempt, base=0.05, cap=0.5)
    # Still changing: the balance checks at the version read first; the rest waits.
    version = _version(before)
    at_version = [e for e in entries if version is None or e.version <= version]
    return UserState(before, at_version, orders=None, busy=True)


# ---------------------------------------------------------------- checks


def credited(order: Order) -> bool:
    """The order was credited once: paid, or refunded/disputed after it was paid."""
    return order.status == OrderStatus.PAID or (
        order.status in (OrderStatus.REFUNDED, OrderStatus.DISPUTED) and bool(order.paid_at)
    )


def reversed_after_paid(order: Order) -> bool:
    return order.status in (OrderStatus.REFUNDED, OrderStatus.DISPUTED) and bool(order.paid_at)


class _RewardLookups:
    """The orders that rebate entries name and the accounts of those orders' users."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        order_ids = [
            e.entry_id.partition("#")[2]
            for e in entries
            if e.kind == EntryKind.REFERRAL_REWARD and e.entry_id.startswith("referral_reward#")
        ]
        self.orders = {o.order_id: o for o in _batch_get(Order, order_ids)} if order_ids else {}
        users = [o.user_id for o in self.orders.values()]
        self.accounts = {a.user_id: a for a in _batch_get(Account, users)} if users else {}

    def order(self, order_id: str) -> Order | None:
        return self.orders.get(order_id)

    def account(self, user_id: str) -> Account | None:
        return self.accounts.get(user_id)


def check_user(user_id: str, state: UserState) -> list[Difference]:
    subject = f"account:{user_id}"
    scope = f"user:{user_id}"
    found: list[Difference] = []

    def report(
        check: str,
        message: str,
        expected: Any = None,
        actual: Any = None,
        about: str = subject,
        tentative: bool = False,
    ) -> None:
        found.append(Difference(check, about, message, expected, actual, scope, tentative))

    account = state.account
    entries = state.entries
    if account is None:
        if entries:
            report(
                "ledger_sum", "ledger entries of an account that does not exist", 0, len(entries)
            )
        for order in state.orders or []:
            if credited(order):
                report(
                    "order_credit",
                    "credited order of an account that does not exist",
                    about=f"order:{order.order_id}",
                )
        return found
    if state.busy:
        report(
            "unverified",
            "the account kept changing: its orders and usage records were not compared",
            tentative=True,
        )

    # Balances and the running sum, in ledger order.
    running = {"quota": 0, "aff_quota": 0}
    broken: set[str] = set()
    for entry in entries:
        balance = entry.balance
        if balance not in running:
            report("entry_kind", f"entry {entry.entry_id} moves an unknown balance", None, balance)
            continue
        running[balance] += entry.delta
        if balance not in broken and entry.balance_after != running[balance]:
            broken.add(balance)
            report(
                "balance_after",
                f"entry {entry.entry_id}: balance_after is not the running sum of {balance}",
                running[balance],
                entry.balance_after,
            )
        if (
            entry.delta < 0
            and entry.balance_after < 0
            and entry.kind not in NEGATIVE_KINDS[balance]
        ):
            report(
                "negative",
                f"entry {entry.entry_id} ({entry.kind}) took {balance} below zero",
                ">= 0",
                entry.balance_after,
            )
        if entry.kind not in KINDS:
            report("entry_kind", f"entry {entry.entry_id} has an unknown kind", None, entry.kind)
        prefix = entry.entry_id.split("#", 1)[0]
        if prefix in PREFIX_KINDS and entry.kind not in PREFIX_KINDS[prefix]:
            report(
                "entry_kind",
                f"entry {entry.entry_id} has kind {entry.kind}",
                sorted(PREFIX_KINDS[prefix]),
                entry.kind,
            )
        if balance == "aff_quota" and entry.kind not in AFF_KINDS:
            report(
                "aff_kind",
                f"entry {entry.entry_id} ({entry.kind}) moves aff_quota",
                sorted(AFF_KINDS),
                entry.kind,
            )
    for balance, total in running.items():
        actual = int(getattr(account, balance))
        if total != actual:
            report("ledger_sum", f"the {balance} ledger does not sum to the balance", total, actual)
    transfers = sum(e.delta for e in entries if e.kind == EntryKind.REFERRAL_TRANSFER)
    if transfers != 0:
        report(
            "aff_kind", "the two sides of the referral transfers do not cancel out", 0, transfers
        )
    earned = sum(
        e.delta
        for e in entries
        if (e.balance == "aff_quota" and e.kind != EntryKind.REFERRAL_TRANSFER)
        or (e.balance == "quota" and e.kind == EntryKind.REVERSAL and _is_clawback(e.entry_id))
    )
    if earned != int(account.aff_history_quota):
        report(
            "aff_kind",
            "aff_history_quota is not the rebates and bonuses less clawbacks",
            earned,
            int(account.aff_history_quota),
        )

    # Counters.
    usage_total = -sum(e.delta for e in entries if e.kind == EntryKind.USAGE)
    if usage_total != int(account.used_quota):
        report(
            "usage",
            "used_quota is not the sum of the usage entries",
            usage_total,
            int(account.used_quota),
        )
    if state.usage is not None:
        usage, lagging = state.usage, not state.usage_settled
        if usage.used != int(account.used_quota):
            report(
                "usage",
                "used_quota is not the sum of the charged and settled records",
                usage.used,
                int(account.used_quota),
                tentative=lagging,
            )
        if usage.requests != int(account.request_count):
            report(
                "usage",
                "request_count is not the number of charged and settled records",
                usage.requests,
                int(account.request_count),
                tentative=lagging,
            )
        if usage.held != int(account.held_quota):
            report(
                "usage",
                "held_quota is not the sum of the open holds",
                usage.held,
                int(account.held_quota),
                tentative=lagging,
            )
    topups = [e for e in entries if e.entry_id.startswith("topup#")]
    if len(topups) != int(account.paid_orders):
        report(
            "usage",
            "paid_orders is not the number of top-up entries",
            len(topups),
            int(account.paid_orders),
        )

    # Credit grants: remainders, per-grant ledger sums, expiry (billing.grant_checks).
    for check, message, expected, actual in grant_problems(account, entries):
        report(check, message, expected, actual)

    if state.orders is not None:
        found += _check_orders(user_id, entries, state.orders, scope)
    found += _check_rewards(user_id, entries, _RewardLookups(entries), scope)
    return found


def order_of(entry_id: str) -> str | None:
    """The order a `topup#<order>` or `reversal#<order>[#<step>]` entry names."""
    prefix, _, rest = entry_id.partition("#")
    if prefix not in ("topup", "reversal") or not rest:
        return None
    return rest.split("#", 1)[0]


def _is_clawback(entry_id: str) -> bool:
    return entry_id.startswith(CLAWBACK_PREFIXES) and entry_id.endswith("#quota")


def _share(total: int, ratio: Fraction) -> int:
    """floor(total x ratio), all of it at 1 (as a refund step computes it)."""
    if ratio >= 1:
        return total
    if ratio <= 0:
        return 0
    return total * ratio.numerator // ratio.denominator


def refunded_share(order: Order) -> int | None:
    """The quota the order's reversals must have taken back by now (None: its amounts are
    unreadable, which is a difference of its own)."""
    quota = int(order.quota)
    if reversed_after_paid(order):
        return quota  # refunded in full, or charged back: nothing of the credit is left
    if order.status != OrderStatus.PAID or not order.refunded_money:
        return 0
    try:
        refunded, paid = Decimal(order.refunded_money), Decimal(order.pay_money)
    except InvalidOperation:
        return None
    if not (refunded.is_finite() and paid.is_finite()) or paid <= 0 or refunded < 0:
        return None
    return _share(quota, min(Fraction(refunded) / Fraction(paid), Fraction(1)))


def _check_orders(
    user_id: str, entries: list[Entry], orders: list[Order], scope: str
) -> list[Difference]:
    found: list[Difference] = []
    topups: dict[str, Entry] = {}
    reversals: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        order_id = order_of(entry.entry_id)
        if order_id is None:
            continue
        if entry.entry_id.startswith("topup#"):
            topups[order_id] = entry
        else:
            reversals[order_id].append(entry)
    own = {o.order_id: o for o in orders}

    def report(order: Order, message: str, expected: Any = None, actual: Any = None) -> None:
        found.append(
            Difference("order_credit", f"order:{order.order_id}", message, expected, actual, scope)
        )

    for order in own.values():
        topup = topups.get(order.order_id)
        quota = int(order.quota)
        if credited(order):
            if topup is None:
                report(order, f"{order.status} order without its top-up entry", 1, 0)
            elif (topup.delta, topup.balance, topup.kind) != (quota, "quota", EntryKind.TOPUP):
                report(
                    order, "the top-up entry does not credit the order's quota", quota, topup.delta
                )
        elif topup is not None:
            report(order, f"{order.status} order was credited", 0, 1)
        steps = reversals.get(order.order_id, [])
        due = refunded_share(order) if credited(order) else 0
        taken = -sum(e.delta for e in steps)
        if due is None:
            report(
                order, "refunded_money or pay_money is not an amount", None, order.refunded_money
            )
        elif any(e.balance != "quota" for e in steps):
            wrong = sorted(e.entry_id for e in steps if e.balance != "quota")
            report(order, "a reversal moves another balance than quota", "quota", wrong[:5])
        elif due and not steps:
            report(order, f"{order.status} order without its reversal entry", 1, 0)
        elif not due and steps:
            report(order, f"{order.status} order has a reversal entry", 0, len(steps))
        elif taken != due:
            report(
                order,
                "the reversals do not take back the refunded share of the order's quota",
                -due,
                -taken,
            )
    for entry in entries:
        order_id = order_of(entry.entry_id)
        if order_id is not None and order_id not in own:
            prefix = entry.entry_id.partition("#")[0]
            found.append(
                Difference(
                    "order_credit",
                    f"order:{order_id}",
                    f"{prefix} entry of account {user_id} without such an order of it",
                    None,
                    entry.entry_id,
                    scope,
                )
            )
    return found


def _check_rewards(
    user_id: str, entries: Iterable[Entry], lookups: _RewardLookups, scope: str
) -> list[Difference]:
    found: list[Difference] = []
    about = f"account:{user_id}"
    for entry in entries:
        if entry.kind != EntryKind.REFERRAL_REWARD:
            continue
        prefix, _, order_id = entry.entry_id.partition("#")
        order = lookups.order(order_id) if prefix == "referral_reward" else None
        if order is None:
            found.append(
                Difference(
                    "referral_reward",
                    about,
                    f"rebate {entry.entry_id} names no order",
                    None,
                    entry.entry_id,
                    scope,
                )
            )
            continue
        if not credited(order):
            found.append(
                Difference(
                    "referral_reward",
                    about,
                    f"rebate {entry.entry_id} for an order that is {order.status}",
                    None,
                    order.status,
                    scope,
                )
            )
        invitee = lookups.account(order.user_id)
        inviter = None if invitee is None else invitee.inviter_id
        if inviter != user_id:
            found.append(
                Difference(
                    "referral_reward",
                    about,
                    f"rebate {entry.entry_id} for an order of a user this account did not invite",
                    user_id,
                    inviter,
                    scope,
                )
            )
        if entry.balance != "aff_quota" or entry.delta <= 0:
            found.append(
                Difference(
                    "referral_reward",
                    about,
                    f"rebate {entry.entry_id} is not a credit of aff_quota",
                    "aff_quota > 0",
                    f"{entry.balance} {entry.delta}",
                    scope,
                )
            )
    return found


def check_invitations(
    user_id: str, aff_count: int, invited: int, *, tentative: bool = False
) -> list[Difference]:
    if aff_count == invited:
        return []
    return [
        Difference(
            "usage",
            f"account:{user_id}",
            "aff_count is not the number of accounts it invited",
            invited,
            aff_count,
            f"invites:{user_id}",
            tentative,
        )
    ]


class Redemptions:
    """The redemption entries of one code, as a ledger scan tallies them. One is held per
    redeemed code until the codes are read, so it keeps a count, the first credit and the
    credits that differ from it (one sample user each), not the entries."""

    __slots__ = ("count", "credit", "odd", "user")

    def __init__(self) -> None:
        self.count = 0
        self.credit: tuple[int, str] = (0, "")
        self.user = ""
        self.odd: dict[tuple[int, str], str] | None = None

    def add(self, entry_id: str, delta: int, balance: str) -> None:
        user = entry_id.split("#", 2)[2]
        credit = (delta, sys.intern(balance))
        if not self.count:
            self.credit, self.user = credit, user
        elif credit != self.credit:
            self.odd = self.odd or {}
            self.odd.setdefault(credit, user)
        self.count += 1

    def samples(self) -> dict[tuple[int, str], str]:
        """One redeeming user of each distinct credit."""
        if not self.count:
            return {}
        return {self.credit: self.user, **(self.odd or {})}


def _code_key(code_id: str) -> bytes | str:
    """Tally key of a code: its HMAC as bytes when it is one (half the memory of the text)."""
    if len(code_id) == 64:
        try:
            return bytes.fromhex(code_id)
        except ValueError:
            pass
    return code_id


def _code_id(key: bytes | str) -> str:
    return key.hex() if isinstance(key, bytes) else key


def check_code(
    code_id: str, code: RedemptionCode | None, redemptions: Redemptions
) -> list[Difference]:
    about = f"code:{code_id}"
    scope = about
    if code is None:
        return [
            Difference(
                "code_uses",
                about,
                "redemptions of a code that does not exist",
                0,
                redemptions.count,
                scope,
            )
        ]
    found: list[Difference] = []
    uses = int(code.uses)
    if redemptions.count != uses:
        found.append(
            Difference(
                "code_uses",
                about,
                "uses is not the number of redemptions",
                redemptions.count,
                uses,
                scope,
            )
        )
    if uses > int(code.max_uses):
        found.append(
            Difference(
                "code_uses", about, "used more than max_uses", int(code.max_uses), uses, scope
            )
        )
    right = (int(code.quota), "quota")
    wrong = sorted(
        f"redeem#{code_id}#{user}"
        for credit, user in redemptions.samples().items()
        if credit != right
    )
    if wrong:
        found.append(
            Difference(
                "code_uses",
                about,
                "redemptions that do not credit the code's quota",
                int(code.quota),
                wrong[:5],
                scope,
            )
        )
    return found


def redeemed_code(entry_id: str) -> str | None:
    """The code of a `redeem#<code_id>#<user>` entry id."""
    parts = entry_id.split("#")
    return parts[1] if len(parts) >= 3 and parts[0] == "redeem" else None


# ---------------------------------------------------------------- the run


class _OutOfTime(Exception):
    pass


class _Run:
    def __init__(self, tables: Tables, options: Options) -> None:
        self.tables = tables
        self.options = options
        self.counts: Counter[str] = Counter()
        self.suspects: dict[str, list[Difference]] = {}
        self.invited: Counter[str] = Counter()  # inviter -> accounts naming it
        self.aff_counts: dict[str, int] = {}  # accounts whose aff_count is not 0
        self.redemptions: dict[bytes | str, Redemptions] = defaultdict(Redemptions)
        # usage records counted for each suspect user, so a re-check counts what it read instead
        # (the first read may have found fewer: the index lags)
        self.usage_counted: dict[str, int] = {}

    # ------------------------------------------------------------ bookkeeping

    def _in_time(self) -> None:
        deadline = self.options.deadline
        if deadline is not None and time.monotonic() >= deadline:
            raise _OutOfTime()

    def suspect(self, differences: Iterable[Difference]) -> None:
        for difference in differences:
            self.suspects.setdefault(difference.scope, []).append(difference)

    def _scan(self, model: type[Model], **kwargs: Any) -> Iterator[Any]:
        return iter(model.scan(consistent_read=True, page_size=self.options.page_size, **kwargs))

    # ------------------------------------------------------------ passes

    def accounts(self) -> None:
        usage = self.tables.usage is not None
        for account in self._scan(Account):
            self._in_time()
            self.counts["accounts"] += 1
            user_id = account.user_id
            if account.inviter_id:
                self.invited[account.inviter_id] += 1
            if int(account.aff_count):
                self.aff_counts[user_id] = int(account.aff_count)
            state = read_user(
                user_id,
                usage=usage,
                index_lag=self.options.index_lag,
                first=account,
                usage_shards=self.tables.usage_shards,
            )
            found = check_user(user_id, state)
            if state.usage is not None:
                self.counts["usage_records"] += state.usage.records
                if found:
                    self.usage_counted[user_id] = state.usage.records
            self.suspect(found)
        for user_id in sorted(set(self.invited) | set(self.aff_counts)):
            self.suspect(
                check_invitations(user_id, self.aff_counts.get(user_id, 0), self.invited[user_id])
            )
        self.invited.clear()
        self.aff_counts.clear()

    def ledger(self) -> None:
        codes = self.tables.codes is not None
        runs: list[tuple[str, int]] = []  # (user, entries) waiting for the account check
        for entry in self._scan(
            LedgerEntry, attributes_to_get=["user_id", "entry_id", "delta", "balance"]
        ):
            self.counts["ledger_entries"] += 1
            if self.counts["ledger_entries"] % 1000 == 0:
                self._in_time()
            if runs and runs[-1][0] == entry.user_id:
                runs[-1] = (entry.user_id, runs[-1][1] + 1)
            else:
                if len(runs) >= _BATCH_GET:
                    self._orphans(runs)
                    runs = []
                runs.append((entry.user_id, 1))
            code_id = redeemed_code(entry.entry_id) if codes else None
            if code_id is not None:
                self.redemptions[_code_key(code_id)].add(
                    entry.entry_id, int(entry.delta), str(entry.balance)
                )
        self._orphans(runs)

    def _orphans(self, runs: list[tuple[str, int]]) -> None:
        if not runs:
            return
        existing = {
            a.user_id
            for a in _batch_get(Account, [u for u, _ in runs], attributes_to_get=["user_id"])
        }
        entries: Counter[str] = Counter()
        for user_id, count in runs:
            if user_id not in existing:
                entries[user_id] += count
        for user_id, count in entries.items():
            self.suspect(
                [
                    Difference(
                        "ledger_sum",
                        f"account:{user_id}",
                        "ledger entries of an account that does not exist",
                        0,
                        count,
                        f"user:{user_id}",
                    )
                ]
            )

    def codes(self) -> None:
        if self.tables.codes is None:
            return
        for code in self._scan(RedemptionCode):
            self.counts["codes"] += 1
            if self.counts["codes"] % 1000 == 0:
                self._in_time()
            redemptions = self.redemptions.pop(_code_key(code.code_id), None) or Redemptions()
            self.suspect(check_code(code.code_id, code, redemptions))
        for key, redemptions in self.redemptions.items():
            self.suspect(check_code(_code_id(key), None, redemptions))
        self.redemptions.clear()

    def orders(self) -> None:
        page: list[Order] = []
        for order in self._scan(
            Order, attributes_to_get=["order_id", "user_id", "status", "paid_at"]
        ):
            self.counts["orders"] += 1
            if credited(order):
                page.append(order)
            if len(page) >= _BATCH_GET:
                self._in_time()
                self._orders_without_account(page)
                page = []
        self._orders_without_account(page)

    def _orders_without_account(self, orders: list[Order]) -> None:
        if not orders:
            return
        users = [o.user_id for o in orders]
        existing = {a.user_id for a in _batch_get(Account, users, attributes_to_get=["user_id"])}
        self.suspect(
            Difference(
                "order_credit",
                f"order:{o.order_id}",
                "credited order of an account that does not exist",
                scope=f"user:{o.user_id}",
            )
            for o in orders
            if o.user_id not in existing
        )

    # ------------------------------------------------------------ re-checks

    def recheck(self, scopes: Iterable[str]) -> dict[str, list[Difference]]:
        """Every suspect scope checked again from fresh reads."""
        by_kind: dict[str, list[str]] = defaultdict(list)
        for scope in scopes:
            kind, _, name = scope.partition(":")
            by_kind[kind].append(name)
        latest: dict[str, list[Difference]] = {}
        usage = self.tables.usage is not None
        for user_id in by_kind["user"]:
            self._in_time()
            state = read_user(
                user_id,
                usage=usage,
                index_lag=self.options.index_lag,
                usage_shards=self.tables.usage_shards,
            )
            latest[f"user:{user_id}"] = check_user(user_id, state)
            if state.usage is not None:
                counted = self.usage_counted.get(user_id, 0)
                self.counts["usage_records"] += state.usage.records - counted
                self.usage_counted[user_id] = state.usage.records
        if by_kind["invites"]:
            latest.update(self._recheck_invitations(by_kind["invites"]))
        if by_kind["code"]:
            latest.update(self._recheck_codes(by_kind["code"]))
        return latest

    def _recheck_invitations(self, users: list[str]) -> dict[str, list[Difference]]:
        wanted = set(users)
        before = {a.user_id: a for a in _batch_get(Account, users)}
        invited: Counter[str] = Counter()
        for account in self._scan(Account, attributes_to_get=["user_id", "inviter_id"]):
            if account.inviter_id in wanted:
                invited[account.inviter_id] += 1
        after = {a.user_id: a for a in _batch_get(Account, users)}
        latest = {}
        for user_id in users:
            account = after.get(user_id)
            aff_count = 0 if account is None else int(account.aff_count)
            # A signup of an invitee bumps the inviter's version: unchanged means exact.
            stable = _version(before.get(user_id)) == _version(account)
            latest[f"invites:{user_id}"] = check_invitations(
                user_id, aff_count, invited[user_id], tentative=not stable
            )
        return latest

    def _recheck_codes(self, code_ids: list[str]) -> dict[str, list[Difference]]:
        wanted = set(code_ids)
        before = {c.code_id: c for c in _batch_get(RedemptionCode, code_ids)}
        redemptions: dict[str, Redemptions] = defaultdict(Redemptions)
        for entry in self._scan(
            LedgerEntry,
            filter_condition=LedgerEntry.entry_id.startswith("redeem#"),
            attributes_to_get=["entry_id", "delta", "balance"],
        ):
            code_id = redeemed_code(entry.entry_id)
            if code_id in wanted:
                redemptions[code_id].add(entry.entry_id, int(entry.delta), str(entry.balance))
        after = {c.code_id: c for c in _batch_get(RedemptionCode, code_ids)}
        latest = {}
        for code_id in code_ids:
            code = after.get(code_id)
            # A redemption bumps the code's uses: unchanged across the scan means exact.
            was, now = before.get(code_id), code
            stable = (None if was is None else int(was.uses)) == (
                None if now is None else int(now.uses)
            )
            found = check_code(code_id, code, redemptions[code_id])
            latest[f"code:{code_id}"] = [d._replace(tentative=not stable) for d in found]
        return latest


def check_account(
    tables: Tables,
    user_id: str,
    *,
    index_lag: float = DEFAULT_OPTIONS.index_lag,
    endpoint: str | None = None,
    credentials: tuple[str, str] | None = None,
    region: str | None = None,
) -> list[Difference]:
    """The per-account checks of one user (aff_count included) from fresh reads, once: for a
    test or an operator looking at one account. Tentative findings are included."""
    with bound(tables, endpoint=endpoint, credentials=credentials, region=region):
        run = _Run(tables, Options(index_lag=index_lag))
        state = read_user(
            user_id,
            usage=tables.usage is not None,
            index_lag=index_lag,
            usage_shards=tables.usage_shards,
        )
        found = check_user(user_id, state)
        return found + run._recheck_invitations([user_id])[f"invites:{user_id}"]


def reconcile(
    tables: Tables,
    options: Options | None = None,
    *,
    endpoint: str | None = None,
    credentials: tuple[str, str] | None = None,
    region: str | None = None,
    observe: Callable[[list[Difference]], None] | None = None,
) -> Report:
    """Run every pass, then re-check each suspect from fresh reads `options.rechecks` times
    (`observe` sees the suspects before each round); a difference is reported only if every
    re-check still shows it, and conclusively."""
    options = options or Options()
    run = _Run(tables, options)
    stopped = ""
    rechecked = 0
    with bound(tables, endpoint=endpoint, credentials=credentials, region=region):
        try:
            for name, step in (
                ("accounts", run.accounts),
                ("ledger", run.ledger),
                ("codes", run.codes),
                ("orders", run.orders),
            ):
                stopped = name
                step()
            stopped = "rechecks"
            suspects = run.suspects
            rechecked = len(suspects)
            for _ in range(options.rechecks):
                if not suspects:
                    break
                if observe is not None:
                    observe([d for diffs in suspects.values() for d in diffs])
                time.sleep(options.pause)  # a transaction in flight has committed by then
                suspects = {s: d for s, d in run.recheck(suspects).items() if d}
            run.suspects = suspects
            stopped = ""
        except _OutOfTime:
            pass
    remaining = [d for diffs in run.suspects.values() for d in diffs]
    if stopped:  # never re-checked: shown, but not as differences
        remaining = [d._replace(tentative=True) for d in remaining]
    counts = {name: run.counts[name] for name in ("accounts", "ledger_entries", "orders")}
    if tables.usage is not None:
        counts["usage_records"] = run.counts["usage_records"]
    if tables.codes is not None:
        counts["codes"] = run.counts["codes"]
    return Report(
        differences=[d for d in remaining if not d.tentative],
        counts=counts,
        rechecked=rechecked,
        unverified=[d for d in remaining if d.tentative],
        complete=not stopped,
        stopped=stopped,
    )
