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

    .venv/bin/python bench/capacity.py          writes bench/results/capacity.json
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]
os.environ.setdefault("SETTINGS_FILE", str(ROOT / "settings" / "local.json"))
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "QuotaTopupBench")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

import botocore.client  # noqa: E402

from tests.support.embedded_tables import embedded_tables  # noqa: E402

OUT = ROOT / "bench" / "results" / "capacity.json"
KB = 1024


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


def _charge_event(user_id: str, key_id: str | None = None) -> Any:
    from billing.usage import metering

    return metering.UsageEvent(
        action=metering.Action.CHARGE,
        request_id=uuid.uuid4().hex,
        user_id=user_id,
        model="gpt-4o",
        prompt_tokens=1000,
        completion_tokens=500,
        key_id=key_id,
    )


BENCH_KEY = "sk-live-7f3a9c2e"  # a gateway key id of a realistic length


def _pre_grants_account(client: Any, settings: Any) -> str:
    """An account as it was before grants and limits existed: no `grants`, no `limits`."""
    from billing.ops import adjustments
    from billing.referral import signup

    user_id = str(uuid.uuid4())  # the length of a Cognito sub
    signup.create_account(user_id, None)
    adjustments.adjust("bench-admin", user_id, 987_654_321, "bench", uuid.uuid4().hex)
    table = next(t for t in _schemas if t.endswith("AccountsTable"))
    _state.inside = True
    try:
        _original(
            client,
            "UpdateItem",
            {
                "TableName": table,
                "Key": {"user_id": {"S": user_id}},
                "UpdateExpression": "REMOVE grants, limits",
            },
        )
    finally:
        _state.inside = False
    return user_id


def _account_at_grant_bound(settings: Any) -> str:
    """MAX_GRANTS promo grants of distinct priorities and expiries, and the overdraft (a settle
    above the balance, repaid only in part): the largest account item the bound allows."""
    from billing.grants import MAX_GRANTS
    from billing.ops import adjustments
    from billing.referral import signup
    from billing.usage import metering

    user_id = str(uuid.uuid4())
    signup.create_account(user_id, None)
    over = metering.UsageEvent(
        action=metering.Action.SETTLE,
        request_id=uuid.uuid4().hex,
        user_id=user_id,
        model="gpt-4o",
        prompt_tokens=10**6,
        completion_tokens=0,
    )
    metering.meter([over], settings=settings)
    for index in range(MAX_GRANTS):
        adjustments.adjust(
            "bench-admin",
            user_id,
            987_654_321 + index,
            "bench",
            uuid.uuid4().hex,
            {"priority": index % 100, "expires_in_days": 30 + index},
        )
    return user_id


def _with_limits(user_id: str) -> str:
    from billing.usage import spend_limits

    spend_limits.put_limit(user_id, "account", 900_000_000_000, "month")
    spend_limits.put_limit(user_id, f"key:{BENCH_KEY}", 90_000_000_000, "day")
    return user_id


def _account_size(client: Any, user_id: str) -> int:
    table = next(t for t in _schemas if t.endswith("AccountsTable"))
    return item_size(_read(client, table, {"user_id": {"S": user_id}}))


def grant_bound_charges(client: Any, settings: Any) -> dict[str, Any]:
    """Write units of one charge (every item of its transaction, 2 x ceil(KB) each, + index
    writes) on an account without grants-era fields and on one at the grant bound, without
    and with spend limits (an account and a key limit: the key's charge also updates two
    counters). The alerts state is not on the account item (its own table), so it adds none.
    Goal: the bound adds at most 1 write unit to a charge."""
    from billing.grants import MAX_GRANTS
    from billing.usage import metering

    cases = {
        "today": (_pre_grants_account(client, settings), None),
        "at_bound": (_account_at_grant_bound(settings), None),
        "today_with_limits": (_with_limits(_pre_grants_account(client, settings)), BENCH_KEY),
        "at_bound_with_limits": (_with_limits(_account_at_grant_bound(settings)), BENCH_KEY),
    }
    rows: dict[str, Any] = {}
    for name, (user_id, key_id) in cases.items():
        size_before = _account_size(client, user_id)
        figures: dict[str, Any] = {}
        with measured(client, figures, name, 5, "account + usage record + entry + counters"):
            metering.meter([_charge_event(user_id, key_id)], settings=settings)
        row = figures[name]
        row["account_item_bytes"] = max(size_before, _account_size(client, user_id))
        rows[name] = row
    extra = rows["at_bound"]["write_units"] - rows["today"]["write_units"]
    extra_limits = (
        rows["at_bound_with_limits"]["write_units"] - rows["today_with_limits"]["write_units"]
    )
    return {
        "max_grants": MAX_GRANTS,
        "charges": rows,
        "extra_write_units": extra,
        "extra_write_units_with_limits": extra_limits,
        "goal": "the grant bound adds at most +1 write unit to a charge",
        "met": extra <= 1 and extra_limits <= 1,
    }


def grant_bound_only() -> dict[str, Any]:
    """grant_bound_charges on a fresh embedded AWS (bench/grants.py reports it too)."""
    botocore.client.BaseClient._make_api_call = _capturing
    try:
        with embedded_tables() as aws:
            client = aws.client("dynamodb")
            for table in client.list_tables()["TableNames"]:
                _schemas[table] = client.describe_table(TableName=table)["Table"]
            from billing.settings import load_settings

            return grant_bound_charges(client, load_settings())
    finally:
        botocore.client.BaseClient._make_api_call = _original


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
            ("credit a top-up", plain, 3, "order + topup entry + account"),
            (
                "credit a top-up of an invited user (with the inviter's rebate)",
                invitee,
                5,
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
                    full_refund=True,  # a partial refund without a refund id is never guessed
                )
            )
        batch = code_admin.create_batch("bench", "bench", 1000, 1, 5, None)
        with measured(client, ops, "redeem a code", 3, "code + redeem entry + account"):
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
        with measured(client, ops, "admin adjustment", 3, "entry + account + audit record"):
            adjustments.adjust("bench-admin", plain, 1000, "bench", uuid.uuid4().hex)
        rich = user(inviter)
        crediting.apply_event(paid(order(rich)))
        with measured(client, ops, "referral transfer", 3, "two entries + account"):
            referral.transfer(inviter, 500_000, uuid.uuid4().hex)
        results["operations"] = ops
        results["grant_bound"] = grant_bound_charges(client, settings)
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


if __name__ == "__main__":
    main()
