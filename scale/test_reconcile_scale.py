"""Reconciliation at scale, on a stack of its own: 100,000 ledger entries over 400 accounts
(one of them holding a tenth), with their orders, codes and usage records, written straight
into the embedded DynamoDB (tests/support/ledger_world.py: going through the API would take
hours). The scheduled function, invoked as its schedule invokes it, runs in a worker with
the template's Timeout and MemorySize; it must find the data clean, and then find a
difference planted in one account and nothing else.

How long it takes and how much memory it peaks at is measured by bench/reconcile_scale.py
(figures in bench/results.md). About half an hour: `make scale` runs it, outside `make test`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from local.template import load_yaml
from tests.support import ledger_world
from tests.support.stack import ROOT, LocalStack

ENTRIES = 100_000
PROPERTIES = load_yaml(ROOT / "infra" / "template.yaml")["Resources"]["ReconcileFunction"][
    "Properties"
]
# The whole module: seeding and two runs of up to the function's Timeout each.
pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="module")
def scale() -> Iterator[tuple[LocalStack, ledger_world.World]]:
    stack = LocalStack("reconcile-scale")
    stack.start()
    try:
        world = ledger_world.seed(stack.aws_endpoint, ledger_world.stack_tables(stack), ENTRIES)
        yield stack, world
    finally:
        stack.stop()


def reconcile(stack: LocalStack) -> dict[str, Any]:
    """One scheduled run through the Invoke API (waiting as long as the Timeout allows)."""
    client = boto3.client(
        "lambda",
        endpoint_url=stack.base_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=PROPERTIES["Timeout"] + 60),
    )
    event = (ROOT / "events" / "reconcile_schedule.json").read_bytes()
    response = client.invoke(FunctionName="ReconcileFunction", Payload=event)
    result: dict[str, Any] = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, result
    return result


def test_100000_entries_reconcile_clean_within_the_function_limits(
    scale: tuple[LocalStack, ledger_world.World],
) -> None:
    stack, world = scale
    assert world.counts["ledger"] == ENTRIES
    result = reconcile(stack)
    assert result["complete"] is True
    assert result["differences"] == 0 and result["unverified"] == 0, result["sample"]
    assert result["clean"] is True
    assert result["counts"] == {
        "accounts": world.counts["accounts"],
        "ledger_entries": ENTRIES,
        "orders": world.counts["orders"],
        "usage_records": world.counts["usage"],
        "codes": world.counts["codes"],
    }


def test_a_difference_planted_among_them_is_found_alone(
    scale: tuple[LocalStack, ledger_world.World],
) -> None:
    stack, world = scale
    user = world.users[len(world.users) // 2]
    stack.boto3_client("dynamodb").update_item(
        TableName=stack.table_name("AccountsTable"),
        Key={"user_id": {"S": user}},
        UpdateExpression="ADD quota :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    result = reconcile(stack)
    assert result["complete"] is True and result["clean"] is False
    assert result["differences"] == 1 and result["unverified"] == 0
    [found] = result["sample"]
    assert (found["check"], found["subject"]) == ("ledger_sum", f"account:{user}")
    assert found["actual"] == found["expected"] + 1
