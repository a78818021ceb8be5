"""tools/migrate_grants.py on a populated stack: accounts made before credit grants existed
(written straight into the embedded DynamoDB, with their ledger, without grants) get their
quota as one `paid` grant without expiry; running it again changes nothing; balances stay and
reconciliation is clean, before and after usage."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from billing.grants import migration_grant_id

from tests.integration.test_metering import all_pages, get_account, usage_event
from tests.support.reconcile import reconcile_stack
from tests.support.stack import LocalStack
from tools import migrate_grants


def legacy_account(stack: LocalStack, adjustments: list[int]) -> str:
    """An account as the code before grants wrote it: quota, version, ledger entries (admin
    adjustments, entries without grants)."""
    user = f"legacy-{uuid.uuid4().hex[:12]}"
    client = stack.boto3_client("dynamodb")
    balance = 0
    version = 0
    for index, delta in enumerate(adjustments):
        balance += delta
        version += 1
        client.put_item(
            TableName=stack.table_name("LedgerTable"),
            Item={
                "user_id": {"S": user},
                "entry_id": {"S": f"adjustment#legacy-{index}"},
                "seq": {"S": f"{version:015d}.000"},
                "kind": {"S": "adjustment"},
                "balance": {"S": "quota"},
                "delta": {"N": str(delta)},
                "balance_after": {"N": str(balance)},
                "ref": {"S": "legacy"},
                "created_at": {"S": "2025-01-01T00:00:00.000000Z"},
            },
        )
    item: dict[str, Any] = {
        "user_id": {"S": user},
        "quota": {"N": str(balance)},
        "used_quota": {"N": "0"},
        "request_count": {"N": "0"},
        "held_quota": {"N": "0"},
        "aff_code": {"S": uuid.uuid4().hex[:8]},
        "aff_quota": {"N": "0"},
        "aff_history_quota": {"N": "0"},
        "aff_count": {"N": "0"},
        "paid_orders": {"N": "0"},
        "status": {"S": "active"},
        "version": {"N": str(version)},
        "created_at": {"S": "2025-01-01T00:00:00.000000Z"},
    }
    client.put_item(TableName=stack.table_name("AccountsTable"), Item=item)
    return user


def raw_account(stack: LocalStack, user: str) -> dict[str, Any]:
    found = stack.boto3_client("dynamodb").get_item(
        TableName=stack.table_name("AccountsTable"),
        Key={"user_id": {"S": user}},
        ConsistentRead=True,
    )
    item: dict[str, Any] = found["Item"]
    return item


def differences_of(stack: LocalStack, users: set[str]) -> list[str]:
    report = reconcile_stack(stack)
    return [str(d) for d in report.differences if any(u in d.subject for u in users)]


def test_the_migration_gives_each_legacy_account_its_quota_as_one_paid_grant(
    stack: LocalStack,
) -> None:
    funded = legacy_account(stack, [5000, 2500, -500])
    empty = legacy_account(stack, [])
    charged_first = legacy_account(stack, [900])
    users = {funded, empty, charged_first}
    # The ledger gives an account it meets without grants the same baseline, at its first
    # change (here: usage before the migration ran).
    first = stack.invoke("MeterUsageFunction", usage_event(charged_first, prompt_tokens=80))
    assert first["status"] == "charged" and first["balance"] == 800

    for _ in range(2):  # idempotent: the second run changes nothing
        assert migrate_grants.main(["--local", stack.base_url]) == 0
        assert "grants" in raw_account(stack, funded)
        assert differences_of(stack, users) == []

    baseline = migration_grant_id(funded)
    account = get_account(stack, funded)
    assert account["quota"] == 7000
    assert [
        (g["grant_id"], g["source"], g["remaining"], g["expires_at"]) for g in account["grants"]
    ] == [(baseline, "paid", 7000, None)]
    (record,) = all_pages(stack, funded, "/grants")
    assert (record["grant_id"], record["ref"], record["amount"]) == (baseline, "migration", 7000)
    assert get_account(stack, empty)["grants"] == []
    assert raw_account(stack, empty)["grants"] == {"M": {}}
    # the lazily migrated account gained its history record, its grant is unchanged
    (lazy,) = all_pages(stack, charged_first, "/grants")
    assert lazy["grant_id"] == migration_grant_id(charged_first) and lazy["remaining"] == 800

    used = stack.invoke("MeterUsageFunction", usage_event(funded, prompt_tokens=800))
    assert used["status"] == "charged" and used["balance"] == 6000
    (usage,) = [
        e for e in all_pages(stack, funded, "/ledger") if e["id"] == f"usage#{used['request_id']}"
    ]
    assert usage["grants"] == {baseline: -1000}
    assert differences_of(stack, users) == []


def test_concurrent_migrations_and_charges_give_one_baseline(stack: LocalStack) -> None:
    users = [legacy_account(stack, [10_000]) for _ in range(3)]

    def work(task: int) -> Any:
        if task < 2:
            return migrate_grants.main(["--local", stack.base_url])
        user = users[task % len(users)]
        return stack.invoke("MeterUsageFunction", usage_event(user, prompt_tokens=80))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(8)))
    assert results[:2] == [0, 0]
    assert all(r["status"] == "charged" for r in results[2:])
    charged = {user: 0 for user in users}
    for task in range(2, 8):
        charged[users[task % len(users)]] += 100
    for user in users:
        account = get_account(stack, user)
        assert account["quota"] == 10_000 - charged[user]
        assert [g["grant_id"] for g in account["grants"]] == [migration_grant_id(user)]
        assert len(all_pages(stack, user, "/grants")) <= 1
    assert migrate_grants.main(["--local", stack.base_url]) == 0
    for user in users:
        assert len(all_pages(stack, user, "/grants")) == 1  # the record, once
    assert differences_of(stack, set(users)) == []
