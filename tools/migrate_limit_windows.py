"""`python -m tools.migrate_limit_windows`: carry the spend of live spend-limit windows from
the LimitCountersTable of earlier revisions (one partition per user, kept by its Retain
policy) to LimitWindowsTable (one partition per window).

    python -m tools.migrate_limit_windows --from <old table> --local http://127.0.0.1:3000
    LIMIT_WINDOWS_TABLE=... python -m tools.migrate_limit_windows --from <old table>   # AWS

Run it right after the deploy that brings LimitWindowsTable: until then a window's spend
before the deploy is not counted against its limit. Each old window still live is added to
its new item (ADD, so spend metered since the deploy stays) and marked migrated in the old
table in one transaction, so a window is carried once however often the command runs, side
by side or after failing half-way; windows already past their TTL are skipped. Exit status:
0 done, 2 the run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from billing import retry
from billing.models import limit_window_key

from tools import target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.migrate_limit_windows", description=__doc__
    )
    parser.add_argument("--from", dest="old", required=True, help="the old LimitCountersTable")
    parser.add_argument("--local", metavar="URL", help="the local stack's base URL")
    parser.add_argument("--endpoint-url", help="DynamoDB endpoint (default: AWS_ENDPOINT_URL)")
    parser.add_argument("--region", default=None, help="AWS region (default: AWS_REGION)")
    parser.add_argument("--windows-table", help="default: $LIMIT_WINDOWS_TABLE")
    return parser.parse_args(argv)


def carry(client: Any, old: str, new: str, now: float) -> dict[str, int]:
    """Add each live, unmigrated old window to its new item, once."""
    counts = {"scanned": 0, "carried": 0, "expired": 0, "carried_before": 0}
    for page in client.get_paginator("scan").paginate(TableName=old, ConsistentRead=True):
        for item in page["Items"]:
            counts["scanned"] += 1
            if "migrated_at" in item:
                counts["carried_before"] += 1
                continue
            expires = item.get("expires_at", {}).get("N")
            if expires is not None and float(expires) <= now:
                counts["expired"] += 1
                continue
            counts[_carry_window(client, old, new, item, now)] += 1
    return counts


def _carry_window(client: Any, old: str, new: str, item: dict[str, Any], now: float) -> str:
    """One window in one transaction: "carried", or "carried_before" by a concurrent run.
    A transaction that meets another run's on the same items wrote nothing: it is tried
    again, and then finds the window marked (its condition fails) or carries it."""
    user, counter = item["user_id"]["S"], item["counter"]["S"]
    expires = item.get("expires_at", {}).get("N")
    values: dict[str, Any] = {
        ":spent": {"N": item.get("spent", {}).get("N", "0")},
        ":user": {"S": user},
        ":counter": {"S": counter},
    }
    update = "ADD spent :spent SET user_id = :user, #counter = :counter"
    if expires is not None:
        update += ", expires_at = :expires"
        values[":expires"] = {"N": expires}
    transaction = [
        {
            "Update": {
                "TableName": new,
                "Key": {"window_key": {"S": limit_window_key(user, counter)}},
                "UpdateExpression": update,
                "ExpressionAttributeNames": {"#counter": "counter"},
                "ExpressionAttributeValues": values,
            }
        },
        {
            "Update": {
                "TableName": old,
                "Key": {"user_id": {"S": user}, "counter": {"S": counter}},
                "UpdateExpression": "SET migrated_at = :now",
                "ConditionExpression": "attribute_not_exists(migrated_at)",
                "ExpressionAttributeValues": {":now": {"N": str(int(now))}},
            }
        },
    ]
    for attempt in range(_ATTEMPTS):
        try:
            client.transact_write_items(TransactItems=transaction)
            return "carried"
        except client.exceptions.TransactionCanceledException as exc:
            codes = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if len(codes) == 2 and codes[1] == "ConditionalCheckFailed":
                return "carried_before"
            if "TransactionConflict" not in codes or attempt + 1 == _ATTEMPTS:
                raise
            retry.pause(attempt, base=0.05, cap=1.0)
    raise AssertionError("unreachable")


# Tries of one window's transaction while it meets another run's.
_ATTEMPTS = 8


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        where = target.choose(args.local, args.endpoint_url, args.region)
        table = where.table("LimitWindowsTable", args.windows_table, "LIMIT_WINDOWS_TABLE")
        counts = carry(where.client(), args.old, table, time.time())
    except Exception as exc:
        print(f"migration could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
