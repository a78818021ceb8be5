"""`python -m tools.migrate_usage_shards`: put usage records made before the sharded usage
index on their shard.

    python -m tools.migrate_usage_shards --local http://127.0.0.1:3000   # the local stack
    USAGE_TABLE=... SETTINGS_PARAMETER=... python -m tools.migrate_usage_shards   # AWS

GET /usage reads a user's records through the by_user_shard index (`user_shard` =
`<user_id>#<n>`, n from the request_id and settings usage.user_shards). A record written
before that index has no `user_shard` and is missing from the listing until this command
sets it (metering sets it too when it settles or releases such a record). Each update is
conditional on the record still having no `user_shard`, so the command is idempotent and
safe while the system runs. Exit status: 0 done, 2 the run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from billing.models import usage_user_shard
from billing.settings import load_settings

from tools import target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.migrate_usage_shards", description=__doc__
    )
    parser.add_argument("--local", metavar="URL", help="the local stack's base URL")
    parser.add_argument("--endpoint-url", help="DynamoDB endpoint (default: AWS_ENDPOINT_URL)")
    parser.add_argument("--region", default=None, help="AWS region (default: AWS_REGION)")
    parser.add_argument("--usage-table", help="default: $USAGE_TABLE")
    return parser.parse_args(argv)


def backfill(client: Any, table: str, shards: int) -> dict[str, int]:
    """Set user_shard on every record without it; counts of what was seen and set."""
    counts = {"scanned": 0, "set": 0, "set_meanwhile": 0}
    paginator = client.get_paginator("scan")
    pages = paginator.paginate(
        TableName=table,
        ConsistentRead=True,
        ProjectionExpression="request_id, user_id, user_shard",
    )
    for page in pages:
        for item in page["Items"]:
            counts["scanned"] += 1
            if "user_shard" in item or "user_id" not in item:
                continue
            request_id, user_id = item["request_id"]["S"], item["user_id"]["S"]
            try:
                client.update_item(
                    TableName=table,
                    Key={"request_id": {"S": request_id}},
                    UpdateExpression="SET user_shard = :shard",
                    ConditionExpression="attribute_exists(request_id) "
                    "AND attribute_not_exists(user_shard)",
                    ExpressionAttributeValues={
                        ":shard": {"S": usage_user_shard(user_id, request_id, shards)}
                    },
                )
                counts["set"] += 1
            except client.exceptions.ConditionalCheckFailedException:
                counts["set_meanwhile"] += 1  # metering set it first (or it is gone)
    return counts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        where = target.choose(args.local, args.endpoint_url, args.region)
        table = where.table("UsageTable", args.usage_table, "USAGE_TABLE")
        shards = load_settings().usage.user_shards
        counts = backfill(where.client(), table, shards)
    except Exception as exc:
        print(f"migration could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"user_shards": shards, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
