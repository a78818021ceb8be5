"""`python -m tools.migrate_grants`: give accounts made before credit grants their grants.

    python -m tools.migrate_grants --local http://127.0.0.1:3000      # the local stack
    ACCOUNTS_TABLE=... GRANTS_TABLE=... python -m tools.migrate_grants   # AWS (your credentials)

For each account without `grants`, its current quota becomes one `paid` grant without expiry
(a negative quota the overdraft), recorded as a migration baseline: no ledger entry, quota
unchanged. The account's grants and the grant's history record are written in one
transaction, conditional on the account's version being the one read and on it still having
no grants, so the command is idempotent and safe while the system runs (an account changed
meanwhile is read again; the ledger gives an account it meets without grants the very same
baseline). An account that got its baseline from the ledger first only gains the missing
history record. Exit status: 0 done, 2 the run failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import Any

from billing import grants as grant_math

from tools import target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.migrate_grants", description=__doc__)
    parser.add_argument("--local", metavar="URL", help="the local stack's base URL")
    parser.add_argument("--endpoint-url", help="DynamoDB endpoint (default: AWS_ENDPOINT_URL)")
    parser.add_argument("--region", default=None, help="AWS region (default: AWS_REGION)")
    parser.add_argument("--accounts-table", help="default: $ACCOUNTS_TABLE")
    parser.add_argument("--grants-table", help="default: $GRANTS_TABLE")
    return parser.parse_args(argv)


def _number(item: dict[str, Any], name: str) -> int:
    value = item.get(name)
    return int(value["N"]) if value else 0


def _epoch(text: str | None) -> int:
    if not text:
        return 0
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def _iso(epoch: int) -> str:
    from datetime import UTC

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _map(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {"M": {key: _map(item) for key, item in value.items()}}
    return {"N": str(value)} if isinstance(value, int) else {"S": str(value)}


def _record(user_id: str, grant: grant_math.Grant) -> dict[str, Any]:
    created = _iso(grant.created_at)
    return {
        "user_id": {"S": user_id},
        "grant_id": {"S": grant.grant_id},
        "created_key": {"S": f"{created}#{grant.grant_id}"},
        "source": {"S": grant.source},
        "amount": {"N": str(grant.amount)},
        "priority": {"N": str(grant.priority)},
        "ref": {"S": "migration"},
        "created_at": {"S": created},
        "baseline": {"N": str(grant.baseline)},
    }


def migrate_account(client: Any, accounts: str, grants_table: str, user_id: str) -> str:
    """Migrate one account: "migrated", "recorded" (history record added), or "skipped"."""
    for _ in range(20):
        item = client.get_item(
            TableName=accounts, Key={"user_id": {"S": user_id}}, ConsistentRead=True
        ).get("Item")
        if item is None:
            return "skipped"
        if "grants" in item:
            return _ensure_record(client, grants_table, user_id, item)
        baseline = grant_math.baseline(
            user_id, _number(item, "quota"), _epoch(item.get("created_at", {}).get("S"))
        )
        version = item.get("version")
        update: dict[str, Any] = {
            "Update": {
                "TableName": accounts,
                "Key": {"user_id": {"S": user_id}},
                "UpdateExpression": "SET #g = :g",
                "ConditionExpression": "attribute_not_exists(#g) AND "
                + ("#v = :v" if version else "attribute_not_exists(#v)"),
                "ExpressionAttributeNames": {"#g": "grants", "#v": "version"},
                "ExpressionAttributeValues": {
                    ":g": _map(grant_math.encode(baseline)),
                    **({":v": version} if version else {}),
                },
            }
        }
        items = [update]
        for grant in baseline.values():
            if grant.grant_id != grant_math.OVERDRAFT:
                items.append({"Put": {"TableName": grants_table, "Item": _record(user_id, grant)}})
        try:
            client.transact_write_items(TransactItems=items)
        except client.exceptions.TransactionCanceledException:
            time.sleep(0.05)  # the account changed (or got its grants): read it again
            continue
        return "migrated"
    raise RuntimeError(f"account {user_id} kept changing")


def _ensure_record(client: Any, grants_table: str, user_id: str, item: dict[str, Any]) -> str:
    grant_id = grant_math.migration_grant_id(user_id)
    raw = item["grants"].get("M", {}).get(grant_id)
    if raw is None:
        return "skipped"
    fields = {key: int(value["N"]) for key, value in raw["M"].items() if "N" in value}
    grant = grant_math.Grant(
        grant_id, "paid", fields.get("a", 0), fields.get("r", 0),
        created_at=fields.get("c", 0), baseline=fields.get("b", 0),
    )  # fmt: skip
    try:
        client.put_item(
            TableName=grants_table,
            Item=_record(user_id, grant),
            ConditionExpression="attribute_not_exists(grant_id)",
        )
    except client.exceptions.ConditionalCheckFailedException:
        return "skipped"
    return "recorded"


def migrate(client: Any, accounts: str, grants_table: str) -> dict[str, int]:
    counts = {"migrated": 0, "recorded": 0, "skipped": 0}
    paginator = client.get_paginator("scan")
    for page in paginator.paginate(
        TableName=accounts, ProjectionExpression="user_id", ConsistentRead=True
    ):
        for item in page.get("Items", []):
            counts[migrate_account(client, accounts, grants_table, item["user_id"]["S"])] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        where = target.choose(args.local, args.endpoint_url, args.region)
        accounts = where.table("AccountsTable", args.accounts_table, "ACCOUNTS_TABLE")
        grants_table = where.table("GrantsTable", args.grants_table, "GRANTS_TABLE")
        counts = migrate(where.client(), accounts, grants_table)
    except Exception as exc:
        print(f"migration could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(", ".join(f"{value} {name}" for name, value in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
