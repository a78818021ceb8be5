"""Consumed write capacity per operation (DynamoDB on-demand write request units).

moto does not report it: ReturnConsumedCapacity gives nothing for TransactWriteItems and a
constant for PutItem/UpdateItem whatever the item size (checked below and written to the
results). So the figure is computed from DynamoDB's documented sizing, on the real items:
each domain operation runs in-process against the template's tables on the embedded AWS,
every write request is captured (botocore), and each written item costs
  - ceil(size / 1 KB) units for a standard write (the larger of the item before and after),
  - twice that inside TransactWriteItems,
  - plus ceil(projected size / 1 KB) per secondary index that holds the item (before or
    after), one write per index (an estimate: DynamoDB skips an index whose attributes did
    not change),
ConditionCheck items are counted apart (they read; their cost is not in the figure).
Item sizes follow DynamoDB's rules (attribute names + values; numbers ~1 byte per 2 digits).

The hot account (issue 20): one DynamoDB partition takes about 1000 write units a second,
and an item can never be split. `hot_account` meters real batches for one account that holds
grants and spend limits (account day and month, one key's day), folds the usage table's
stream into rollups in the stream's batches, and prices every write per partition it lands
on (table partition key, or index partition key), scaled to 25,000 events a second.

    .venv/bin/python bench/capacity.py          writes bench/results/capacity.json
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]


def _deployed_settings() -> str:
    """settings/local.json with usage.user_shards at its default (what a deployment gets),
    not the local stack's 4: the hot-account figures are for production's shards."""
    import tempfile

    document = json.loads((ROOT / "settings" / "local.json").read_text())
    document.pop("usage", None)
    handle, path = tempfile.mkstemp(prefix="capacity-settings-", suffix=".json")
    with os.fdopen(handle, "w") as out:
        json.dump(document, out)
    return path


os.environ.setdefault("SETTINGS_FILE", _deployed_settings())
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "QuotaTopupBench")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

import botocore.client  # noqa: E402

from tests.support.embedded_tables import embedded_tables  # noqa: E402

OUT = ROOT / "bench" / "results" / "capacity.json"
KB = 1024
HOT_EVENTS_PER_SECOND = 25_000
PARTITION_WCU = 1000  # what one DynamoDB partition takes a second
HOT_BATCH = 500  # events per metering call (the most a batch holds)


# ---------------------------------------------------------------- sizes


def value_size(value: dict[str, Any]) -> int:
    ((kind, raw),) = value.items()
    if kind == "S":
        return len(raw.encode())
    if kind == "N":
        digits = raw.lstrip("-").replace(".", "").lstrip("0") or "0"
        return math.ceil(len(digits) / 2) + 1
    if kind == "B":
        return len(raw) if isinstance(raw, bytes) else len(str(raw))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + value_size(v) + 1 for k, v in raw.items())
    if kind == "L":
        return 3 + sum(value_size(v) + 1 for v in raw)
    if kind in ("SS", "NS", "BS"):
        return sum(value_size({kind[0]: item}) for item in raw)
    return 0


def item_size(item: dict[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def units(size: int) -> int:
    return max(1, math.ceil(size / KB)) if size else 0


# ---------------------------------------------------------------- capture


@dataclass
class Written:
    table: str
    key: dict[str, Any]
    transactional: bool
    before: dict[str, Any] | None = None
    item: dict[str, Any] | None = None  # a Put's item (an update's is read after)


@dataclass
class Capture:
    writes: list[Written] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    condition_checks: int = 0


_state = threading.local()
_original = botocore.client.BaseClient._make_api_call
_schemas: dict[str, dict[str, Any]] = {}


def _key_of(table: str, item: dict[str, Any]) -> dict[str, Any]:
    names = [k["AttributeName"] for k in _schemas[table]["KeySchema"]]
    return {name: item[name] for name in names}


def _read(client: Any, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
    _state.inside = True
    try:
        found: dict[str, Any] | None = _original(
            client, "GetItem", {"TableName": table, "Key": key, "ConsistentRead": True}
        ).get("Item")
        return found
    finally:
        _state.inside = False


def _capturing(client: Any, operation: str, params: dict[str, Any]) -> Any:
    capture: Capture | None = getattr(_state, "capture", None)
    if (
        capture is None
        or getattr(_state, "inside", False)
        or client.meta.service_model.service_name != "dynamodb"
    ):
        return _original(client, operation, params)
    capture.calls[operation] = capture.calls.get(operation, 0) + 1
    planned: list[Written] = []
    if operation == "PutItem":
        table = params["TableName"]
        key = _key_of(table, params["Item"])
        planned.append(Written(table, key, False, _read(client, table, key), params["Item"]))
    elif operation in ("UpdateItem", "DeleteItem"):
        table = params["TableName"]
        planned.append(Written(table, params["Key"], False, _read(client, table, params["Key"])))
    elif operation == "BatchWriteItem":
        for table, requests in params["RequestItems"].items():
            for request in requests:
                if "PutRequest" in request:
                    item = request["PutRequest"]["Item"]
                    key = _key_of(table, item)
                    planned.append(Written(table, key, False, _read(client, table, key), item))
                else:
                    key = request["DeleteRequest"]["Key"]
                    planned.append(Written(table, key, False, _read(client, table, key)))
    elif operation == "TransactWriteItems":
        for action in params["TransactItems"]:
            ((kind, spec),) = action.items()
            if kind == "ConditionCheck":
                capture.condition_checks += 1
                continue
            table = spec["TableName"]
            key = _key_of(table, spec["Item"]) if kind == "Put" else spec["Key"]
            planned.append(Written(table, key, True, _read(client, table, key), spec.get("Item")))
    result = _original(client, operation, params)
    capture.writes.extend(planned)
    return result


def cost(client: Any, capture: Capture) -> dict[str, Any]:
    table_units = index_units = 0
    per_table: dict[str, int] = {}
    for write in capture.writes:
        after = write.item if write.item is not None else _read(client, write.table, write.key)
        size = max(item_size(write.before), item_size(after))
        base = units(size) * (2 if write.transactional else 1)
        table_units += base
        short = write.table.removeprefix("quota-local-")
        per_table[short] = per_table.get(short, 0) + base
        schema = _schemas[write.table]
        for index in schema.get("GlobalSecondaryIndexes", []) + schema.get(
            "LocalSecondaryIndexes", []
        ):
            names = [k["AttributeName"] for k in index["KeySchema"]]
            holders = [i for i in (write.before, after) if i and all(n in i for n in names)]
            if not holders:
                continue
            projection = index["Projection"]["ProjectionType"]
            keys = set(names) | {k["AttributeName"] for k in schema["KeySchema"]}
            projected = max(
                item_size(i if projection == "ALL" else {k: v for k, v in i.items() if k in keys})
                for i in holders
            )
            index_units += units(projected)
    return {
        "write_units": table_units + index_units,
        "table_write_units": table_units,
        "index_write_units": index_units,
        "items_written": len(capture.writes),
        "condition_checks": capture.condition_checks,
        "by_table": dict(sorted(per_table.items())),
        "calls": dict(sorted(capture.calls.items())),
    }


def per_partition(client: Any, capture: Capture) -> dict[tuple[str, str, str], dict[str, int]]:
    """(table, index or "" or "#item", partition key value or item key) -> {units, writes}:
    what each write costs on each partition it lands on (the table's, each index's that
    holds the item) and on each item (which no partition split can spread)."""
    found: dict[tuple[str, str, str], dict[str, int]] = {}

    def add(where: tuple[str, str, str], cost_units: int) -> None:
        row = found.setdefault(where, {"units": 0, "writes": 0})
        row["units"] += cost_units
        row["writes"] += 1

    for write in capture.writes:
        after = write.item if write.item is not None else _read(client, write.table, write.key)
        size = max(item_size(write.before), item_size(after))
        short = write.table.removeprefix("quota-local-")
        schema = _schemas[write.table]
        hash_name = schema["KeySchema"][0]["AttributeName"]
        ((_, hash_value),) = write.key[hash_name].items()
        base = units(size) * (2 if write.transactional else 1)
        add((short, "", str(hash_value)), base)
        add((short, "#item", json.dumps(write.key, sort_keys=True)), base)
        local = {i["IndexName"] for i in schema.get("LocalSecondaryIndexes", [])}
        for index in schema.get("GlobalSecondaryIndexes", []) + schema.get(
            "LocalSecondaryIndexes", []
        ):
            names = [k["AttributeName"] for k in index["KeySchema"]]
            keys = set(names) | {k["AttributeName"] for k in schema["KeySchema"]}
            projection = index["Projection"]["ProjectionType"]
            # A local index lives in its table's partition: its writes count there.
            where_index = "" if index["IndexName"] in local else index["IndexName"]
            for holder in {id(i): i for i in (write.before, after) if i}.values():
                if not all(n in holder for n in names):
                    continue
                projected = (
                    holder
                    if projection == "ALL"
                    else {k: v for k, v in holder.items() if k in keys}
                )
                ((_, index_hash),) = holder[names[0]].items()
                add((short, where_index, str(index_hash)), units(item_size(projected)))
                if (
                    write.before is not None
                    and after is not None
                    and all(
                        n in write.before and n in after and write.before[n] == after[n]
                        for n in names
                    )
                ):
                    break  # the same index item, updated in place: one write
    return found


@contextmanager
def measured(
    client: Any, results: dict[str, Any], name: str, goal_items: int, why: str
) -> Iterator[None]:
    """Measure one operation; its goal is the fewest items the design needs written."""
    capture = Capture()
    _state.capture = capture
    try:
        yield
    finally:
        _state.capture = None
    figures = cost(client, capture)
    results[name] = {
        **figures,
        "goal_items": goal_items,
        "goal": f"<= {goal_items} items: {why}",
        "met": figures["items_written"] <= goal_items,
    }


# ---------------------------------------------------------------- the operations


def moto_report(client: Any, table: str) -> dict[str, Any]:
    """What moto itself reports, to show why it is not used."""
    key = f"bench-{uuid.uuid4().hex}"
    put = client.put_item(
        TableName=table,
        Item={"request_id": {"S": key}, "blob": {"S": "x" * 3000}},
        ReturnConsumedCapacity="TOTAL",
    ).get("ConsumedCapacity")
    transact = client.transact_write_items(
        TransactItems=[{"Put": {"TableName": table, "Item": {"request_id": {"S": key + "t"}}}}],
        ReturnConsumedCapacity="TOTAL",
    ).get("ConsumedCapacity")
    return {
        "put_item_3kb": put,
        "transact_write_items": transact,
        "note": "a 3 KB PutItem costs 3 WRU in DynamoDB; TransactWriteItems reports none",
    }


# ---------------------------------------------------------------- the hot account

# What each partition is, for the table (table, index) -> label.
_PARTITIONS = {
    ("AccountsTable", ""): "account item (the user's partition)",
    ("LedgerTable", ""): "ledger entries + their local index by_seq (the user's partition)",
    ("UsageTable", ""): "usage record (partition = its request_id)",
    ("UsageTable", "by_user_shard"): "by_user_shard index: the user's hottest shard",
    ("UsageTable", "open_holds"): "open_holds index: the hottest hold shard (all users)",
    ("LimitWindowsTable", ""): "limit window (its own partition: user, scope and window)",
    ("UsageRollupsTable", ""): "rollups (the user's partition; each marker its own)",
    ("GrantsTable", ""): "grant history (the user's partition)",
}
# What a row over the goal means, and what is left to do about it.
_NOTES: dict[tuple[str, str], str] = {}


def _user_shard_of(request_id: str) -> int:
    from billing.models import usage_shard_number
    from billing.settings import load_settings

    return usage_shard_number(request_id, load_settings().usage.user_shards)


def _hold_shard_of(request_id: str) -> str:
    from billing.usage import metering

    return metering.hold_shard(request_id)


# Indexes whose partition comes from the request id through a hash.
_SHARDED: dict[str, Callable[[str], Any]] = {
    "by_user_shard": _user_shard_of,
    "open_holds": _hold_shard_of,
}


def _stream_batch_size() -> int:
    text = (ROOT / "infra" / "template.yaml").read_text()
    block = text[text.index("  UsageRollupFunction:") :]
    return int(block[block.index("BatchSize:") :].split()[1])


def hot_table(
    found: dict[tuple[str, str, str], dict[str, int]], events: int
) -> list[dict[str, Any]]:
    """The hottest partition (and item) of every (table, index), scaled to the goal rate."""
    scale = HOT_EVENTS_PER_SECOND / events
    groups: dict[tuple[str, str], list[tuple[str, dict[str, int]]]] = {}
    for (table, index, key), row in found.items():
        groups.setdefault((table, index), []).append((key, row))
    rows: list[dict[str, Any]] = []
    for (table, index), members in sorted(groups.items()):
        if index == "#item":
            continue
        key, hottest = max(members, key=lambda m: m[1]["units"])
        items = [row for k, row in groups.get((table, "#item"), []) if index == ""]
        hottest_item = max((row["units"] for row in items), default=None)
        per_second = round(hottest["units"] * scale)
        sharding = _SHARDED.get(index)
        if sharding is not None:
            # A few hundred events spread over the shards say little of the hottest one at
            # the full rate: a second of it, drawn through the same hash, does.
            writes = sum(row["writes"] for _, row in members)
            unit = max(math.ceil(row["units"] / row["writes"]) for _, row in members)
            drawn = Counter(sharding(uuid.uuid4().hex) for _ in range(round(writes * scale)))
            per_second = max(drawn.values()) * unit
        item_per_second = None if hottest_item is None else round(hottest_item * scale)
        rows.append(
            {
                "partition": _PARTITIONS.get((table, index), f"{table} {index}".strip()),
                "table": table,
                "index": index or None,
                "partitions_written": len(members),
                "hottest_partition_writes": hottest["writes"],
                "hottest_partition_units": hottest["units"],
                "wcu_per_second": per_second,
                "hottest_item_wcu_per_second": item_per_second,
                "goal": f"<= {PARTITION_WCU} WCU/s",
                "met": per_second <= PARTITION_WCU,
                **(
                    {"note": _NOTES[(table, index)]}
                    if per_second > PARTITION_WCU and (table, index) in _NOTES
                    else {}
                ),
            }
        )
    return rows


def hot_account(client: Any, settings: Any, user: Any, order: Any, paid: Any) -> dict[str, Any]:
    """One account at 25,000 events a second, on paper (module docstring)."""
    from billing.codes import admin as code_admin
    from billing.codes import redemption
    from billing.payments import crediting
    from billing.usage import metering, rollups, spend_limits

    hot = user()
    for _ in range(3):  # grants from three top-ups and a code: a realistic account item
        assert crediting.apply_event(paid(order(hot))) is crediting.Outcome.CREDITED
    batch = code_admin.create_batch("bench", "bench", 1000, 1, 1, None)
    redemption.redeem(hot, batch.codes[0], "127.0.0.1")
    for scope, period in (("account", "day"), ("account", "month"), ("key:k-hot", "day")):
        spend_limits.put_limit(hot, scope, 10**12, period)
    account_size = item_size(
        client.get_item(
            TableName=next(t for t in _schemas if t.endswith("AccountsTable")),
            Key={"user_id": {"S": hot}},
            ConsistentRead=True,
        )["Item"]
    )

    def events(action: str, ids: list[str]) -> list[Any]:
        return [
            metering.UsageEvent(
                action=metering.Action(action),
                request_id=rid,
                user_id=hot,
                model="gpt-4o",
                prompt_tokens=1000,
                completion_tokens=500,
                key_id="k-hot",
            )
            for rid in ids
        ]

    scenarios: dict[str, Any] = {}
    # Charges: two full batches, then the stream of their records folded into rollups.
    capture = Capture()
    _state.capture = capture
    try:
        charged_ids = [uuid.uuid4().hex for _ in range(2 * HOT_BATCH)]
        for start in range(0, len(charged_ids), HOT_BATCH):
            outcome = metering.meter(
                events("charge", charged_ids[start : start + HOT_BATCH]), settings=settings
            )
            assert outcome.complete and all(r and r["status"] == "charged" for r in outcome.results)
    finally:
        _state.capture = None
    chunks = sum(1 for w in capture.writes if w.table.endswith("AccountsTable"))
    usage_table = next(t for t in _schemas if t.endswith("UsageTable"))
    stream = [
        {
            "eventName": "INSERT",
            "dynamodb": {"SequenceNumber": str(n), "NewImage": w.item},
        }
        for n, w in enumerate(capture.writes)
        if w.table == usage_table and w.item is not None
    ]
    batch_size = _stream_batch_size()
    _state.capture = capture
    try:
        for start in range(0, len(stream), batch_size):
            assert rollups.apply_stream_records(stream[start : start + batch_size]) == []
    finally:
        _state.capture = None
    found = per_partition(client, capture)
    scenarios["charge"] = {
        "events": len(charged_ids),
        "account_writes": chunks,
        "events_per_account_write": round(len(charged_ids) / chunks, 1),
        "stream_batch_size": batch_size,
        "partitions": hot_table(found, len(charged_ids)),
    }
    # Reserve then settle: every request is two events (two writes of its record).
    capture = Capture()
    _state.capture = capture
    try:
        held_ids = [uuid.uuid4().hex for _ in range(HOT_BATCH)]
        for action in ("reserve", "settle"):
            outcome = metering.meter(events(action, held_ids), settings=settings)
            assert outcome.complete
    finally:
        _state.capture = None
    scenarios["reserve_then_settle"] = {
        "events": 2 * len(held_ids),
        "account_writes": sum(1 for w in capture.writes if w.table.endswith("AccountsTable")),
        "partitions": hot_table(per_partition(client, capture), 2 * len(held_ids)),
    }
    every = [row for s in scenarios.values() for row in s["partitions"]]
    return {
        "events_per_second": HOT_EVENTS_PER_SECOND,
        "usage_user_shards": settings.usage.user_shards,
        "account_item_bytes": account_size,
        "scenarios": scenarios,
        "goal": f"every partition an event touches <= {PARTITION_WCU} WCU/s",
        "met": all(row["met"] for row in every),
        "over": sorted({row["partition"] for row in every if not row["met"]}),
    }


def run() -> dict[str, Any]:
    botocore.client.BaseClient._make_api_call = _capturing
    results: dict[str, Any] = {}
    with embedded_tables() as aws:
        client = aws.client("dynamodb")
        for table in client.list_tables()["TableNames"]:
            _schemas[table] = client.describe_table(TableName=table)["Table"]
        secrets = aws.client("secretsmanager").list_secrets()["SecretList"]
        code_key = next(s["ARN"] for s in secrets if s["Name"].endswith("CodeHashSecret"))
        os.environ["CODE_HASH_SECRET_ARN"] = code_key
        from billing import accounts, clock, money
        from billing.codes import admin as code_admin
        from billing.codes import redemption
        from billing.models import Order
        from billing.ops import adjustments
        from billing.payments import crediting
        from billing.payments.providers.base import EventType, PaymentEvent
        from billing.referral import rewards as referral
        from billing.referral import signup
        from billing.settings import load_settings
        from billing.usage import metering

        settings = load_settings()
        ops: dict[str, Any] = {}

        def user(inviter: str | None = None) -> str:
            user_id = f"bench-{uuid.uuid4().hex[:10]}"
            code = None if inviter is None else accounts.get_account(inviter).aff_code
            signup.create_account(user_id, code)
            return user_id

        def order(user_id: str) -> Order:
            at = clock.iso()
            created = Order(
                order_id=f"ord_{uuid.uuid4().hex[:24]}",
                user_id=user_id,
                method="stripe",
                amount=10,
                pay_money="10.00",
                currency="USD",
                quota=5_000_000,
                status="pending",
                created_at=at,
                updated_at=at,
            )
            created.save()
            return created

        def paid(o: Order) -> PaymentEvent:
            return PaymentEvent(
                provider="stripe",
                event_id=f"evt_{uuid.uuid4().hex}",
                type=EventType.PAID,
                order_id=o.order_id,
                amount=money.parse("10.00", "USD"),
                currency="USD",
                provider_payment_id=f"pi_{uuid.uuid4().hex[:20]}",
            )

        def event(
            user_id: str, action: str = "charge", rid: str | None = None
        ) -> metering.UsageEvent:
            return metering.UsageEvent(
                action=metering.Action(action),
                request_id=rid or uuid.uuid4().hex,
                user_id=user_id,
                model="gpt-4o",
                prompt_tokens=1000,
                completion_tokens=500,
            )

        inviter = user()
        with measured(client, ops, "create account", 2, "account + referral code"):
            user()
        with measured(
            client, ops, "create account with a referral code", 3, "+ the inviter's aff_count"
        ):
            invitee = user(inviter)
        plain = user()
        for name, owner, items, why in (
            ("credit a top-up", plain, 4, "order + topup entry + account + grant record"),
            (
                "credit a top-up of an invited user (with the inviter's rebate)",
                invitee,
                6,
                "+ inviter's account and reward entry",
            ),
        ):
            target = order(owner)
            with measured(client, ops, name, items, why):
                assert crediting.apply_event(paid(target)) is crediting.Outcome.CREDITED
        target = order(plain)
        crediting.apply_event(paid(target))
        with measured(client, ops, "duplicate credit (same order again)", 0, "nothing"):
            crediting.apply_event(paid(target))
        refunded = order(invitee)
        crediting.apply_event(paid(refunded))
        with measured(
            client,
            ops,
            "refund of a credited order (invited: with clawback)",
            5,
            "order + reversal + account + clawback + inviter",
        ):
            crediting.apply_event(
                PaymentEvent(
                    provider="stripe",
                    event_id=f"evt_{uuid.uuid4().hex}",
                    type=EventType.REFUNDED,
                    order_id=refunded.order_id,
                    full_refund=True,  # a refund must say what it refunds (crediting)
                )
            )
        batch = code_admin.create_batch("bench", "bench", 1000, 1, 5, None)
        with measured(
            client, ops, "redeem a code", 4, "code + redeem entry + account + grant record"
        ):
            redemption.redeem(plain, batch.codes[0], "127.0.0.1")
        with measured(
            client, ops, "charge (one usage event)", 3, "usage record + usage entry + account"
        ):
            metering.meter([event(plain)], settings=settings)
        rid = uuid.uuid4().hex
        with measured(client, ops, "reserve", 2, "usage record + account (no entry)"):
            metering.meter([event(plain, "reserve", rid)], settings=settings)
        with measured(client, ops, "settle", 3, "usage record + usage entry + account"):
            metering.meter([event(plain, "settle", rid)], settings=settings)
        with measured(
            client,
            ops,
            "charge batch of 100 events, one user",
            104,
            "100 records + 2 chunks x (entry + account)",
        ):
            metering.meter([event(plain) for _ in range(100)], settings=settings)
        with measured(client, ops, "admin adjustment", 4, "entry + account + audit + grant record"):
            adjustments.adjust("bench-admin", plain, 1000, "bench", uuid.uuid4().hex)
        rich = user(inviter)
        crediting.apply_event(paid(order(rich)))
        with measured(client, ops, "referral transfer", 4, "two entries + account + grant record"):
            referral.transfer(inviter, 500_000, uuid.uuid4().hex)
        results["operations"] = ops
        results["hot_account"] = hot_account(client, settings, user, order, paid)
        usage_table = next(t for t in _schemas if t.endswith("UsageTable"))
        results["moto_reports"] = moto_report(client, usage_table)
    results["method"] = (
        "computed from DynamoDB's sizing rules on the items written (moto does not report "
        "consumed capacity): standard write = ceil(KB), transactional = 2 x ceil(KB) per item, "
        "+ ceil(projected KB) per secondary index holding the item; ConditionCheck not included"
    )
    return results


def main() -> None:
    results = run()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(name) for name in results["operations"])
    for name, figures in results["operations"].items():
        print(
            f"{name:<{width}}  {figures['write_units']:>4} WRU "
            f"({figures['table_write_units']} table + {figures['index_write_units']} index, "
            f"{figures['items_written']} items, {figures['condition_checks']} checks)"
        )
    hot = results["hot_account"]
    print(f"\none account at {hot['events_per_second']} events/s (WCU/s per partition):")
    for name, scenario in hot["scenarios"].items():
        for row in scenario["partitions"]:
            mark = "ok" if row["met"] else "OVER"
            print(f"  {name:<20} {row['partition']:<62} {row['wcu_per_second']:>7}  {mark}")


if __name__ == "__main__":
    main()
