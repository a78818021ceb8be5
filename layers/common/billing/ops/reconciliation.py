"""Reconciliation: recompute every balance from the ledger and every order from its entries.

Read-only. It scans the tables (consistent reads), checks the invariants of DESIGN.md that the
stored data must satisfy, and returns the differences as a list: it never repairs anything,
an operator decides. Checks, per account:
- `ledger_sum`: the deltas of each balance (quota, aff_quota) sum to the balance;
- `balance_after`: in ledger order (seq), each entry's balance_after is the running sum;
- `negative`: a debit that leaves a balance below zero is a settle (usage) or a reversal;
- `aff_kind`: aff_quota moves only by referral rebate (and the inviter's bonus for an
  invitee's first order), clawback (reversal) and transfer, and the two sides of a transfer
  cancel out; aff_history_quota is what the rebates and bonuses less clawbacks came to;
- `entry_kind`: every entry has a known kind matching its id's cause prefix;
- `usage`: used_quota, request_count and held_quota agree with the usage records, and
  used_quota with the usage entries; `paid_orders` with the top-up entries; `aff_count` with
  the accounts that name this one as their inviter;
- `order_credit`: a paid order, or a refunded/disputed one that had been paid, has exactly one
  `topup#<order>` of its quota on its user's ledger; a pending/failed/expired one (or one
  closed before it was paid) has none; a refunded/disputed-after-paid one has its
  `reversal#<order>`; no top-up/reversal entry without its order;
- `referral_reward`: a rebate entry names a credited order of a user this account invited;
and per redemption code (`code_uses`): `uses` equals the number of `redeem#<code>#<user>`
entries, each of the code's quota, and never exceeds `max_uses`.

Scans are not snapshots: a transaction that commits between two scans could look like a
difference. So every suspect is checked again from fresh reads (an account and its ledger are
read together only when the account's version, bumped by every ledger transaction, is the
same before and after), and only what persists in every re-check is reported.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from billing.grant_checks import grant_problems
from billing.models import Account, LedgerEntry, Order, RedemptionCode, UsageRecord

Raw = dict[str, Any]

# Statuses of orders (billing.payments.orders) and usage records (billing.usage.metering),
# repeated here so that this module imports nothing that writes.
PAID, REFUNDED, DISPUTED = "paid", "refunded", "disputed"
CHARGED, SETTLED, RESERVED = "charged", "settled", "reserved"

KINDS = frozenset(
    {
        "topup",
        "redeem",
        "referral_reward",
        "referral_transfer",
        "usage",
        "refund",
        "reversal",
        "adjustment",
        "signup_bonus",
        "expiry",
    }
)
# Cause prefix of an entry id -> the kinds it may carry.
PREFIX_KINDS: dict[str, frozenset[str]] = {
    "topup": frozenset({"topup"}),
    "reversal": frozenset({"reversal"}),
    "redeem": frozenset({"redeem"}),
    "usage": frozenset({"usage"}),
    "adjustment": frozenset({"adjustment"}),
    "referral_reward": frozenset({"referral_reward"}),
    "referral_clawback": frozenset({"reversal"}),
    "referral_transfer": frozenset({"referral_transfer"}),
    "signup_bonus": frozenset({"signup_bonus"}),
    "expiry": frozenset({"expiry"}),
}
# The inviter's bonus on an invitee's first paid order is a rebate (kind signup_bonus).
AFF_KINDS = frozenset({"referral_reward", "signup_bonus", "referral_transfer", "reversal"})
# A debit may leave a balance below zero only when the usage already happened (settle) or
# when a credit is taken back (refund, dispute, clawback).
NEGATIVE_KINDS = {
    "quota": frozenset({"usage", "reversal", "expiry"}),
    "aff_quota": frozenset({"reversal"}),
}


@dataclass(frozen=True)
class Difference:
    check: str
    subject: str  # "account:<user>", "order:<id>", "code:<id>"
    message: str
    expected: Any = None
    actual: Any = None
    scope: str = ""  # what a re-check must re-read: "user:<id>" or "code:<id>"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("scope")
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


@dataclass(frozen=True)
class Tables:
    accounts: str
    ledger: str
    orders: str
    usage: str | None = None
    codes: str | None = None

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


class Reader(Protocol):
    """The reads reconciliation needs (a botocore DynamoDB client does them)."""

    def scan(self, **kwargs: Any) -> Raw: ...

    def query(self, **kwargs: Any) -> Raw: ...

    def get_item(self, **kwargs: Any) -> Raw: ...


@dataclass
class UserState:
    """What the per-account checks look at, for one user."""

    account: Account | None
    entries: list[LedgerEntry]
    orders: list[Order]
    usage: list[UsageRecord] | None = None  # None: the usage table was not read
    invitees: int | None = None  # accounts naming this one as inviter; None: not counted


@dataclass
class Snapshot:
    accounts: dict[str, Account] = field(default_factory=dict)
    entries: dict[str, list[LedgerEntry]] = field(default_factory=lambda: defaultdict(list))
    orders: dict[str, Order] = field(default_factory=dict)
    usage: dict[str, list[UsageRecord]] | None = None
    codes: dict[str, RedemptionCode] | None = None

    def user_ids(self) -> list[str]:
        users = set(self.accounts) | set(self.entries)
        users |= {order.user_id for order in self.orders.values()}
        return sorted(users)

    def state(self, user_id: str) -> UserState:
        invitees = Counter(a.inviter_id for a in self.accounts.values() if a.inviter_id)
        return self._state(user_id, invitees)

    def _state(self, user_id: str, invitees: Mapping[str, int]) -> UserState:
        return UserState(
            account=self.accounts.get(user_id),
            entries=sorted(self.entries.get(user_id, []), key=lambda e: e.seq),
            orders=[o for o in self.orders.values() if o.user_id == user_id],
            usage=None if self.usage is None else self.usage.get(user_id, []),
            invitees=invitees.get(user_id, 0),
        )


@dataclass
class Report:
    differences: list[Difference]
    counts: dict[str, int]
    rechecked: int = 0  # suspects read again; those that vanished were transient

    @property
    def clean(self) -> bool:
        return not self.differences

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "differences": [d.as_dict() for d in self.differences],
            "counts": dict(self.counts),
            "rechecked": self.rechecked,
        }


# ---------------------------------------------------------------- reading


def _pages(call: Any, **kwargs: Any) -> Iterator[Raw]:
    while True:
        page = call(**kwargs)
        yield from page.get("Items", [])
        last = page.get("LastEvaluatedKey")
        if not last:
            return
        kwargs["ExclusiveStartKey"] = last


def scan(reader: Reader, table: str, **kwargs: Any) -> Iterator[Raw]:
    return _pages(reader.scan, TableName=table, ConsistentRead=True, **kwargs)


def load(reader: Reader, tables: Tables) -> Snapshot:
    snapshot = Snapshot()
    for raw in scan(reader, tables.accounts):
        account = Account.from_raw_data(raw)
        snapshot.accounts[account.user_id] = account
    for raw in scan(reader, tables.ledger):
        entry = LedgerEntry.from_raw_data(raw)
        snapshot.entries[entry.user_id].append(entry)
    for raw in scan(reader, tables.orders):
        order = Order.from_raw_data(raw)
        snapshot.orders[order.order_id] = order
    if tables.usage:
        usage: dict[str, list[UsageRecord]] = defaultdict(list)
        for raw in scan(reader, tables.usage):
            record = UsageRecord.from_raw_data(raw)
            usage[record.user_id].append(record)
        snapshot.usage = usage
    if tables.codes:
        snapshot.codes = {
            code.code_id: code
            for code in (RedemptionCode.from_raw_data(raw) for raw in scan(reader, tables.codes))
        }
    return snapshot


def _get(reader: Reader, table: str, key: Raw) -> Raw | None:
    item: Raw | None = reader.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
    return item


def load_user(
    reader: Reader,
    tables: Tables,
    user_id: str,
    *,
    count_invitees: bool = True,
    attempts: int = 10,
) -> UserState:
    """One user's account, ledger, orders and usage, read so that they agree in time: the
    account's version is the same before and after the ledger is read. Counting the accounts
    it invited takes a scan of the accounts (`count_invitees`)."""
    key = {"user_id": {"S": user_id}}
    for _ in range(attempts):
        before = _get(reader, tables.accounts, key)
        entries = [
            LedgerEntry.from_raw_data(raw)
            for raw in _pages(
                reader.query,
                TableName=tables.ledger,
                KeyConditionExpression="user_id = :u",
                ExpressionAttributeValues={":u": {"S": user_id}},
                ConsistentRead=True,
            )
        ]
        order_ids = [
            raw["order_id"]["S"]
            for raw in _pages(
                reader.query,
                TableName=tables.orders,
                IndexName="by_user",
                KeyConditionExpression="user_id = :u",
                ExpressionAttributeValues={":u": {"S": user_id}},
            )
        ]
        # The top-up and reversal entries name orders too (a GSI may lag behind its table).
        order_ids += [
            entry.entry_id.split("#", 1)[1]
            for entry in entries
            if entry.entry_id.startswith(("topup#", "reversal#"))
        ]
        orders = [
            Order.from_raw_data(raw)
            for raw in (
                _get(reader, tables.orders, {"order_id": {"S": order_id}})
                for order_id in dict.fromkeys(order_ids)
            )
            if raw is not None
        ]
        usage: list[UsageRecord] | None = None
        if tables.usage:
            usage = [
                UsageRecord.from_raw_data(raw)
                for raw in _pages(
                    reader.query,
                    TableName=tables.usage,
                    IndexName="by_user",
                    KeyConditionExpression="user_id = :u",
                    ExpressionAttributeValues={":u": {"S": user_id}},
                )
            ]
        after = _get(reader, tables.accounts, key)
        if _version(before) == _version(after):
            invitees = None
            if count_invitees:
                invitees = sum(
                    1
                    for _ in scan(
                        reader,
                        tables.accounts,
                        FilterExpression="inviter_id = :u",
                        ExpressionAttributeValues={":u": {"S": user_id}},
                        ProjectionExpression="user_id",
                    )
                )
            return UserState(
                account=None if after is None else Account.from_raw_data(after),
                entries=sorted(entries, key=lambda e: e.seq),
                orders=[o for o in orders if o.user_id == user_id],
                usage=usage,
                invitees=invitees,
            )
    raise RuntimeError(f"account {user_id} kept changing while it was read")


def _version(raw: Raw | None) -> str | None:
    return None if raw is None else str(raw.get("version", {}).get("N"))


# ---------------------------------------------------------------- checks


class _Lookups(Protocol):
    def order(self, order_id: str) -> Order | None: ...

    def account(self, user_id: str) -> Account | None: ...


@dataclass
class _SnapshotLookups:
    snapshot: Snapshot

    def order(self, order_id: str) -> Order | None:
        return self.snapshot.orders.get(order_id)

    def account(self, user_id: str) -> Account | None:
        return self.snapshot.accounts.get(user_id)


@dataclass
class _ReaderLookups:
    reader: Reader
    tables: Tables

    def order(self, order_id: str) -> Order | None:
        raw = _get(self.reader, self.tables.orders, {"order_id": {"S": order_id}})
        return None if raw is None else Order.from_raw_data(raw)

    def account(self, user_id: str) -> Account | None:
        raw = _get(self.reader, self.tables.accounts, {"user_id": {"S": user_id}})
        return None if raw is None else Account.from_raw_data(raw)


def credited(order: Order) -> bool:
    """The order was credited once: paid, or refunded/disputed after it was paid."""
    return order.status == PAID or (order.status in (REFUNDED, DISPUTED) and bool(order.paid_at))


def reversed_after_paid(order: Order) -> bool:
    return order.status in (REFUNDED, DISPUTED) and bool(order.paid_at)


def check_user(user_id: str, state: UserState, lookups: _Lookups) -> list[Difference]:
    subject = f"account:{user_id}"
    scope = f"user:{user_id}"
    found: list[Difference] = []

    def report(
        check: str, message: str, expected: Any = None, actual: Any = None, about: str = subject
    ) -> None:
        found.append(Difference(check, about, message, expected, actual, scope))

    account = state.account
    entries = state.entries
    if account is None:
        if entries:
            report(
                "ledger_sum", "ledger entries of an account that does not exist", 0, len(entries)
            )
        for order in state.orders:
            if credited(order):
                report(
                    "order_credit",
                    "credited order of an account that does not exist",
                    about=f"order:{order.order_id}",
                )
        return found

    # Balances and the running sum, in ledger order.
    running = {"quota": 0, "aff_quota": 0}
    broken: set[str] = set()
    for entry in entries:
        balance = str(entry.balance)
        if balance not in running:
            report("entry_kind", f"entry {entry.entry_id} moves an unknown balance", None, balance)
            continue
        delta = int(entry.delta)
        running[balance] += delta
        if balance not in broken and int(entry.balance_after) != running[balance]:
            broken.add(balance)
            report(
                "balance_after",
                f"entry {entry.entry_id}: balance_after is not the running sum of {balance}",
                running[balance],
                int(entry.balance_after),
            )
        if (
            delta < 0
            and int(entry.balance_after) < 0
            and str(entry.kind) not in NEGATIVE_KINDS[balance]
        ):
            report(
                "negative",
                f"entry {entry.entry_id} ({entry.kind}) took {balance} below zero",
                ">= 0",
                int(entry.balance_after),
            )
        kind = str(entry.kind)
        if kind not in KINDS:
            report("entry_kind", f"entry {entry.entry_id} has an unknown kind", None, kind)
        prefix = entry.entry_id.split("#", 1)[0]
        if prefix in PREFIX_KINDS and kind not in PREFIX_KINDS[prefix]:
            report(
                "entry_kind",
                f"entry {entry.entry_id} has kind {kind}",
                sorted(PREFIX_KINDS[prefix]),
                kind,
            )
        if balance == "aff_quota" and kind not in AFF_KINDS:
            report(
                "aff_kind",
                f"entry {entry.entry_id} ({kind}) moves aff_quota",
                sorted(AFF_KINDS),
                kind,
            )
    for balance, total in running.items():
        actual = int(getattr(account, balance))
        if total != actual:
            report("ledger_sum", f"the {balance} ledger does not sum to the balance", total, actual)
    transfers = sum(int(e.delta) for e in entries if str(e.kind) == "referral_transfer")
    if transfers != 0:
        report(
            "aff_kind", "the two sides of the referral transfers do not cancel out", 0, transfers
        )
    earned = sum(
        int(e.delta)
        for e in entries
        if str(e.balance) == "aff_quota" and str(e.kind) != "referral_transfer"
    )
    if earned != int(account.aff_history_quota):
        report(
            "aff_kind",
            "aff_history_quota is not the rebates and bonuses less clawbacks",
            earned,
            int(account.aff_history_quota),
        )

    # Counters.
    usage_total = -sum(int(e.delta) for e in entries if str(e.kind) == "usage")
    if usage_total != int(account.used_quota):
        report(
            "usage",
            "used_quota is not the sum of the usage entries",
            usage_total,
            int(account.used_quota),
        )
    if state.usage is not None:
        done = [r for r in state.usage if r.status in (CHARGED, SETTLED)]
        used = sum(int(r.quota) for r in done)
        if used != int(account.used_quota):
            report(
                "usage",
                "used_quota is not the sum of the charged and settled records",
                used,
                int(account.used_quota),
            )
        if len(done) != int(account.request_count):
            report(
                "usage",
                "request_count is not the number of charged and settled records",
                len(done),
                int(account.request_count),
            )
        held = sum(int(r.hold_quota) for r in state.usage if r.status == RESERVED)
        if held != int(account.held_quota):
            report(
                "usage",
                "held_quota is not the sum of the open holds",
                held,
                int(account.held_quota),
            )
    topups = [e for e in entries if e.entry_id.startswith("topup#")]
    if len(topups) != int(account.paid_orders):
        report(
            "usage",
            "paid_orders is not the number of top-up entries",
            len(topups),
            int(account.paid_orders),
        )
    if state.invitees is not None and state.invitees != int(account.aff_count):
        report(
            "usage",
            "aff_count is not the number of accounts it invited",
            state.invitees,
            int(account.aff_count),
        )

    # Credit grants: remainders, per-grant ledger sums, expiry (billing.grant_checks).
    for check, message, expected, actual in grant_problems(account, entries):
        report(check, message, expected, actual)

    found += _check_orders(user_id, state, scope)
    found += _check_rewards(user_id, entries, lookups, scope)
    return found


def _check_orders(user_id: str, state: UserState, scope: str) -> list[Difference]:
    found: list[Difference] = []
    by_id = {e.entry_id: e for e in state.entries}
    own = {o.order_id: o for o in state.orders}
    for order in own.values():
        about = f"order:{order.order_id}"
        topup = by_id.get(f"topup#{order.order_id}")
        reversal = by_id.get(f"reversal#{order.order_id}")
        quota = int(order.quota)
        if credited(order):
            if topup is None:
                found.append(
                    Difference(
                        "order_credit",
                        about,
                        f"{order.status} order without its top-up entry",
                        1,
                        0,
                        scope,
                    )
                )
            elif (int(topup.delta), str(topup.balance), str(topup.kind)) != (
                quota,
                "quota",
                "topup",
            ):
                found.append(
                    Difference(
                        "order_credit",
                        about,
                        "the top-up entry does not credit the order's quota",
                        quota,
                        int(topup.delta),
                        scope,
                    )
                )
        elif topup is not None:
            found.append(
                Difference("order_credit", about, f"{order.status} order was credited", 0, 1, scope)
            )
        if reversed_after_paid(order):
            if reversal is None:
                found.append(
                    Difference(
                        "order_credit",
                        about,
                        f"{order.status} order without its reversal entry",
                        1,
                        0,
                        scope,
                    )
                )
            elif (int(reversal.delta), str(reversal.balance)) != (-quota, "quota"):
                found.append(
                    Difference(
                        "order_credit",
                        about,
                        "the reversal does not take back the order's quota",
                        -quota,
                        int(reversal.delta),
                        scope,
                    )
                )
        elif reversal is not None:
            found.append(
                Difference(
                    "order_credit", about, f"{order.status} order has a reversal entry", 0, 1, scope
                )
            )
    for entry in state.entries:
        prefix, _, order_id = entry.entry_id.partition("#")
        if prefix in ("topup", "reversal") and order_id not in own:
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
    user_id: str, entries: Iterable[LedgerEntry], lookups: _Lookups, scope: str
) -> list[Difference]:
    found: list[Difference] = []
    for entry in entries:
        if str(entry.kind) != "referral_reward":
            continue
        prefix, _, order_id = entry.entry_id.partition("#")
        about = f"account:{user_id}"
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
        if str(entry.balance) != "aff_quota" or int(entry.delta) <= 0:
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


def check_code(
    code_id: str, code: RedemptionCode | None, entries: list[LedgerEntry]
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
                len(entries),
                scope,
            )
        ]
    found: list[Difference] = []
    uses = int(code.uses)
    if len(entries) != uses:
        found.append(
            Difference(
                "code_uses",
                about,
                "uses is not the number of redemptions",
                len(entries),
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
    wrong = [
        e.entry_id for e in entries if (int(e.delta), str(e.balance)) != (int(code.quota), "quota")
    ]
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


def _redeem_code_id(entry: LedgerEntry) -> str | None:
    parts = entry.entry_id.split("#")
    return parts[1] if len(parts) >= 3 and parts[0] == "redeem" else None


def check(snapshot: Snapshot) -> list[Difference]:
    """Every difference the snapshot shows (pure: no reads)."""
    lookups = _SnapshotLookups(snapshot)
    invitees = Counter(a.inviter_id for a in snapshot.accounts.values() if a.inviter_id)
    found: list[Difference] = []
    for user_id in snapshot.user_ids():
        found += check_user(user_id, snapshot._state(user_id, invitees), lookups)
    if snapshot.codes is not None:
        redemptions: dict[str, list[LedgerEntry]] = defaultdict(list)
        for entries in snapshot.entries.values():
            for entry in entries:
                code_id = _redeem_code_id(entry)
                if code_id is not None:
                    redemptions[code_id].append(entry)
        for code_id in sorted(set(snapshot.codes) | set(redemptions)):
            found += check_code(code_id, snapshot.codes.get(code_id), redemptions[code_id])
    return found


# ---------------------------------------------------------------- the run


def check_account(
    reader: Reader, tables: Tables, user_id: str, *, count_invitees: bool = True
) -> list[Difference]:
    """The per-account checks of one user, from fresh reads."""
    state = load_user(reader, tables, user_id, count_invitees=count_invitees)
    return check_user(user_id, state, _ReaderLookups(reader, tables))


def _recheck(
    reader: Reader, tables: Tables, scope: str, suspects: list[Difference]
) -> list[Difference]:
    kind, _, name = scope.partition(":")
    if kind == "user":
        # aff_count is checked again only when it was the suspect (it takes a scan).
        invitees = any(d.message.startswith("aff_count") for d in suspects)
        return check_account(reader, tables, name, count_invitees=invitees)
    assert tables.codes is not None
    for _ in range(10):
        before = _get(reader, tables.codes, {"code_id": {"S": name}})
        entries = [
            LedgerEntry.from_raw_data(raw)
            for raw in scan(
                reader,
                tables.ledger,
                FilterExpression="begins_with(entry_id, :p)",
                ExpressionAttributeValues={":p": {"S": f"redeem#{name}#"}},
            )
        ]
        after = _get(reader, tables.codes, {"code_id": {"S": name}})
        if before == after:
            code = None if after is None else RedemptionCode.from_raw_data(after)
            return check_code(name, code, entries)
    raise RuntimeError(f"code {name} kept changing while it was read")


def reconcile(reader: Reader, tables: Tables, *, rechecks: int = 2, pause: float = 1.0) -> Report:
    """Scan, check, and re-check each suspect from fresh reads `rechecks` times; a difference
    is reported only if every re-check still shows one for that account or code."""
    snapshot = load(reader, tables)
    found = check(snapshot)
    counts = {
        "accounts": len(snapshot.accounts),
        "ledger_entries": sum(len(v) for v in snapshot.entries.values()),
        "orders": len(snapshot.orders),
    }
    if snapshot.usage is not None:
        counts["usage_records"] = sum(len(v) for v in snapshot.usage.values())
    if snapshot.codes is not None:
        counts["codes"] = len(snapshot.codes)
    suspects: dict[str, list[Difference]] = {}
    for difference in found:
        suspects.setdefault(difference.scope, []).append(difference)
    rechecked = len(suspects)
    for _ in range(rechecks):
        if not suspects:
            break
        time.sleep(pause)  # once per round: a transaction in flight has committed by then
        latest = {
            scope: _recheck(reader, tables, scope, diffs) for scope, diffs in suspects.items()
        }
        suspects = {scope: diffs for scope, diffs in latest.items() if diffs}
    confirmed = [difference for diffs in suspects.values() for difference in diffs]
    return Report(differences=confirmed, counts=counts, rechecked=rechecked)
