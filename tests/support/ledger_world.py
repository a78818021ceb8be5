"""A large, consistent billing history written straight into a stack's embedded DynamoDB.

For the scale test and bench of the reconciliation: going through the API would take hours
for 100,000 ledger entries, so the items are built here, exactly as the domain writes them
(the models serialize them), and stored with BatchWriteItem. Everything agrees the way the
domain keeps it agreeing: each account's ledger sums to its balances, every balance_after is
the running sum and only a reversal takes a balance below zero; top-ups have their paid
orders (some refunded, in full or 4.00 of their 10.00, with their reversal steps),
redemptions their single-use codes, charges and settles their usage records, open holds
their reserved records; invitees' top-ups pay their inviter a rebate on aff_quota, part of
which the inviter transfers to its balance; aff_count counts the invitees.

One account (the "whale") holds a tenth of the entries, to show that memory follows the
largest account, not the table.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from billing import retry
from billing.models import Account, LedgerEntry, Order, RedemptionCode, UsageRecord
from botocore.config import Config

from tests.support.stack import LocalStack

CREATED = "2024-01-01T00:00:00.000000Z"
BATCH = 25
_LOGICAL = {
    "accounts": "AccountsTable",
    "ledger": "LedgerTable",
    "orders": "OrdersTable",
    "usage": "UsageTable",
    "codes": "RedemptionCodesTable",
}


@dataclass
class World:
    """What was written (ids to plant differences on, and the counts)."""

    run: str
    users: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class _Account:
    """One account's history as it is generated (balances, counters, version)."""

    def __init__(self, user_id: str, inviter: str | None) -> None:
        self.user_id = user_id
        self.inviter = inviter
        self.quota = self.aff_quota = self.aff_history = 0
        self.used = self.requests = self.held = self.paid_orders = 0
        self.invitees = 0
        self.version = 0

    def entry(self, entry_id: str, kind: str, delta: int, balance: str = "quota") -> LedgerEntry:
        self.version += 1
        if balance == "quota":
            self.quota += delta
            after = self.quota
        else:
            self.aff_quota += delta
            after = self.aff_quota
        return LedgerEntry(
            user_id=self.user_id,
            entry_id=entry_id,
            seq=f"{self.version:015d}.000",
            kind=kind,
            balance=balance,
            delta=delta,
            balance_after=after,
            ref="",
            created_at=CREATED,
        )

    def item(self) -> Account:
        return Account(
            user_id=self.user_id,
            quota=self.quota,
            used_quota=self.used,
            request_count=self.requests,
            held_quota=self.held,
            aff_code=f"A{uuid.uuid4().hex[:11].upper()}",
            aff_quota=self.aff_quota,
            aff_history_quota=self.aff_history,
            aff_count=self.invitees,
            inviter_id=self.inviter,
            paid_orders=self.paid_orders,
            version=self.version,
            created_at=CREATED,
            updated_at=CREATED,
        )


def _order(
    order_id: str, user_id: str, quota: int, status: str, refunded: str | None = None
) -> Order:
    return Order(
        order_id=order_id,
        user_id=user_id,
        method="stripe",
        amount=quota // 500_000 or 1,
        pay_money="10.00",
        currency="USD",
        quota=quota,
        status=status,
        created_at=CREATED,
        paid_at=None if status == "pending" else CREATED,
        updated_at=CREATED,
        refunded_money=refunded,
    )


def _code(code_id: str, quota: int, uses: int) -> RedemptionCode:
    return RedemptionCode(
        code_id=code_id,
        list_shard=f"codes#{int(code_id[:8], 16) % 8}",
        list_sort=f"{CREATED}#{code_id}",
        name="scale",
        quota=quota,
        max_uses=1,
        uses=uses,
        batch_id="b-scale",
        created_by="bench",
        created_at=CREATED,
    )


def _usage(request_id: str, user_id: str, status: str, quota: int, hold: int = 0) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        user_id=user_id,
        model="gpt-4o",
        prompt_tokens=100,
        completion_tokens=50,
        quota=quota,
        hold_quota=hold,
        status=status,
        created_at=CREATED,
        updated_at=CREATED,
    )


def _history(
    account: _Account, entries: int, rng: random.Random, rebates: list[tuple[str, int]]
) -> Iterator[tuple[str, Any]]:
    """(table, item) pairs of one account: `entries` ledger entries in all."""
    user = account.user_id
    written = 0
    for order_id, amount in rebates:  # what this account's invitees' top-ups paid it
        yield (
            "ledger",
            account.entry(f"referral_reward#{order_id}", "referral_reward", amount, "aff_quota"),
        )
        account.aff_history += amount
        written += 1
    if account.aff_quota > 1 and written + 2 <= entries:
        moved, transfer = account.aff_quota // 2, uuid.uuid4().hex[:12]
        yield (
            "ledger",
            account.entry(
                f"referral_transfer#{transfer}#aff", "referral_transfer", -moved, "aff_quota"
            ),
        )
        yield "ledger", account.entry(f"referral_transfer#{transfer}", "referral_transfer", moved)
        written += 2
    while written < entries:
        roll = rng.random()
        if roll < 0.15 or account.quota < 1000:
            quota = rng.randrange(1, 20) * 500_000
            order_id = f"ord_{uuid.uuid4().hex[:24]}"
            refunded = account.inviter is None and rng.random() < 0.05 and written + 2 <= entries
            full = refunded and rng.random() < 0.5
            if full:  # all of the 10.00 came back: one step, named by its total in cents
                order = _order(order_id, user, quota, "refunded", "10.00")
            elif refunded:  # 4.00 of 10.00: the order stays paid, 40% of its quota is taken
                order = _order(order_id, user, quota, "paid", "4.00")
            else:
                order = _order(order_id, user, quota, "paid")
            yield "orders", order
            yield "ledger", account.entry(f"topup#{order_id}", "topup", quota)
            account.paid_orders += 1
            written += 1
            if refunded:
                step, taken = ("1000", quota) if full else ("400", quota * 4 // 10)
                yield (
                    "ledger",
                    account.entry(f"reversal#{order_id}#{step}", "reversal", -taken),
                )
                written += 1
            elif account.inviter is not None:
                yield "rebate", (account.inviter, order_id, quota // 10)
        elif roll < 0.2:
            code_id = uuid.uuid4().hex + uuid.uuid4().hex
            quota = rng.randrange(1, 100) * 1000
            yield "codes", _code(code_id, quota, uses=1)
            yield "ledger", account.entry(f"redeem#{code_id}#{user}", "redeem", quota)
            written += 1
        elif roll < 0.6:
            delta = rng.randrange(-500, 5000)
            delta = max(delta, -account.quota)
            yield (
                "ledger",
                account.entry(f"adjustment#{uuid.uuid4().hex[:16]}", "adjustment", delta),
            )
            written += 1
        else:
            cost = min(account.quota, rng.randrange(100, 20_000))
            request_id = f"req-{uuid.uuid4().hex}"
            status = "charged" if rng.random() < 0.7 else "settled"
            yield "usage", _usage(request_id, user, status, cost)
            yield "ledger", account.entry(f"usage#{request_id}", "usage", -cost)
            account.used += cost
            account.requests += 1
            written += 1
    if rng.random() < 0.2:  # an open hold: a reserved record and held quota, no entry
        hold = min(account.quota - account.held, 5000)
        if hold > 0:
            account.version += 1
            account.held += hold
            yield "usage", _usage(f"req-{uuid.uuid4().hex}", user, "reserved", 0, hold)
    if rng.random() < 0.3:
        yield "orders", _order(f"ord_{uuid.uuid4().hex[:24]}", user, 500_000, "pending")


class _Writer:
    """Buffers items per table and stores them 25 at a time from a few threads."""

    def __init__(self, endpoint: str, tables: dict[str, str], threads: int = 3) -> None:
        self.tables = tables
        self.client = _client(endpoint, threads)
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.futures: list[Any] = []

    def add(self, table: str, item: Any) -> None:
        items = self.pending[table]
        items.append(item.serialize())
        if len(items) == BATCH:
            self.futures.append(self.pool.submit(self._write, self.tables[table], items))
            self.pending[table] = []
        if len(self.futures) > 64:
            for future in self.futures:
                future.result()
            self.futures = []

    def _write(self, table: str, items: list[dict[str, Any]]) -> None:
        request = {table: [{"PutRequest": {"Item": item}} for item in items]}
        for attempt in range(100):
            request = self.client.batch_write_item(RequestItems=request).get("UnprocessedItems")
            if not request:
                return
            retry.pause(attempt, base=0.05, cap=1.0)  # a throttled partition (a strict stack)
        raise RuntimeError(f"{table}: items still unprocessed after 100 attempts")

    def close(self) -> None:
        for table, items in self.pending.items():
            if items:
                self.futures.append(self.pool.submit(self._write, self.tables[table], items))
        for future in self.futures:
            future.result()
        self.pool.shutdown()


def _client(endpoint: str, threads: int) -> Any:
    import boto3

    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(
            parameter_validation=False,
            max_pool_connections=threads * 2,
            retries={"mode": "standard", "max_attempts": 10},
        ),
    )


def stack_tables(stack: LocalStack) -> dict[str, str]:
    health = stack.health()["tables"]
    return {name: health[logical] for name, logical in _LOGICAL.items()}


def seed(
    endpoint: str,
    tables: dict[str, str],
    entries: int = 100_000,
    accounts: int = 400,
    seed: int = 7,
) -> World:
    """Write `entries` ledger entries over `accounts` accounts (and everything they imply)
    into `tables` ("accounts", "ledger", "orders", "usage", "codes" -> table name)."""
    rng = random.Random(seed)
    world = World(run=uuid.uuid4().hex[:8])
    writer = _Writer(endpoint, tables)
    whale = entries // 10
    rest = entries - whale
    sizes = [whale] + [
        rest // (accounts - 1) + (1 if i < rest % (accounts - 1) else 0)
        for i in range(accounts - 1)
    ]
    users = [f"scale-{world.run}-{i:05d}" for i in range(accounts)]
    # Account i (i odd) was invited by account i+1, which is generated after it.
    inviters = {users[i]: users[i + 1] for i in range(1, accounts - 1, 4)}
    rebates: dict[str, list[tuple[str, int]]] = defaultdict(list)
    invitees: dict[str, int] = defaultdict(int)
    for user in inviters.values():
        invitees[user] += 1
    for user, size in zip(users, sizes, strict=True):
        account = _Account(user, inviters.get(user))
        account.invitees = invitees[user]
        for table, item in _history(account, size, rng, rebates.pop(user, [])):
            if table == "rebate":
                inviter, order_id, amount = item
                rebates[inviter].append((order_id, amount))
                continue
            writer.add(table, item)
            world.counts[table] += 1
            if table == "codes":
                world.codes.append(item.code_id)
        writer.add("accounts", account.item())
        world.counts["accounts"] += 1
        world.users.append(user)
    writer.close()
    assert not rebates, "every rebate went to an inviter generated after its invitee"
    return world
