"""local.fast_dynamodb answers every read exactly as unpatched moto does.

One table with a sort key, a local and a global index (whose sort key repeats, so moto's
tie-break by the table key matters), string and number keys, a key-only table whose items
hold binary, sets, lists and maps, and a table keyed by numbers (which sort as numbers);
every Query and Scan is run page by page (Limit and ExclusiveStartKey), and GetItem and
BatchGetItem once, with moto's own code and then with the patch, and the answers must be
identical. So must the item size limit on writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from local import fast_dynamodb


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    fast_dynamodb.uninstall()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="entries",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "user_id", "AttributeType": "S"},
                {"AttributeName": "entry_id", "AttributeType": "S"},
                {"AttributeName": "seq", "AttributeType": "N"},
                {"AttributeName": "shard", "AttributeType": "S"},
                {"AttributeName": "created_at", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "user_id", "KeyType": "HASH"},
                {"AttributeName": "entry_id", "KeyType": "RANGE"},
            ],
            LocalSecondaryIndexes=[
                {
                    "IndexName": "by_seq",
                    "KeySchema": [
                        {"AttributeName": "user_id", "KeyType": "HASH"},
                        {"AttributeName": "seq", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by_shard",
                    "KeySchema": [
                        {"AttributeName": "shard", "KeyType": "HASH"},
                        {"AttributeName": "created_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
        )
        client.create_table(
            TableName="accounts",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "user_id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "user_id", "KeyType": "HASH"}],
        )
        client.create_table(
            TableName="numbers",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "n", "AttributeType": "N"},
                {"AttributeName": "m", "AttributeType": "N"},
            ],
            KeySchema=[
                {"AttributeName": "n", "KeyType": "HASH"},
                {"AttributeName": "m", "KeyType": "RANGE"},
            ],
        )
        for n in ("-10", "-2.5", "0", "3", "10", "100"):  # numeric, not lexical, order
            for m in ("-1", "2", "11"):
                client.put_item(TableName="numbers", Item={"n": {"N": n}, "m": {"N": m}})
        for user in range(7):
            client.put_item(
                TableName="accounts",
                Item={
                    "user_id": {"S": f"u{user}"},
                    "quota": {"N": str(user * 10)},
                    "key": {"B": bytes([0, user, 255])},
                    "tags": {"SS": ["a", f"t{user}"]},
                    "grants": {"L": [{"M": {"left": {"N": "1.50"}, "on": {"BOOL": True}}}]},
                    "none": {"NULL": True},
                },
            )
            for n in range(23):
                item = {
                    "user_id": {"S": f"u{user}"},
                    "entry_id": {"S": f"{'topup' if n % 3 else 'usage'}#{n:03d}"},
                    "seq": {"N": str((n * 7919) % 101 - 50)},  # negative and unordered
                    "delta": {"N": str(n - 11)},
                }
                if n % 4:  # a sparse global index with repeated sort keys
                    item["shard"] = {"S": f"s{(user + n) % 3}"}
                    item["created_at"] = {"S": f"2030-01-0{n % 5 + 1}"}
                client.put_item(TableName="entries", Item=item)
        yield client
    fast_dynamodb.install()


REQUESTS: list[tuple[str, dict[str, Any]]] = [
    (
        "query",
        {
            "TableName": "entries",
            "KeyConditionExpression": "user_id = :u",
            "ExpressionAttributeValues": {":u": {"S": "u3"}},
            "ConsistentRead": True,
        },
    ),
    (
        "query",
        {
            "TableName": "entries",
            "KeyConditionExpression": "user_id = :u AND begins_with(entry_id, :p)",
            "FilterExpression": "delta > :d",
            "ExpressionAttributeValues": {
                ":u": {"S": "u2"},
                ":p": {"S": "topup#"},
                ":d": {"N": "0"},
            },
            "ScanIndexForward": False,
        },
    ),
    (
        "query",
        {
            "TableName": "entries",
            "KeyConditionExpression": "user_id = :u",
            "ExpressionAttributeValues": {":u": {"S": "nobody"}},
        },
    ),
    (
        "query",
        {
            "TableName": "entries",
            "IndexName": "by_seq",
            "KeyConditionExpression": "user_id = :u AND seq BETWEEN :a AND :b",
            "ExpressionAttributeValues": {":u": {"S": "u5"}, ":a": {"N": "-20"}, ":b": {"N": "30"}},
            "ConsistentRead": True,
        },
    ),
    (
        "query",
        {
            "TableName": "entries",
            "IndexName": "by_seq",
            "KeyConditionExpression": "user_id = :u",
            "ExpressionAttributeValues": {":u": {"S": "u1"}},
            "ScanIndexForward": False,
        },
    ),
    (
        "query",
        {
            "TableName": "entries",
            "IndexName": "by_shard",
            "KeyConditionExpression": "shard = :s",
            "ExpressionAttributeValues": {":s": {"S": "s1"}},
            "ScanIndexForward": False,
        },
    ),
    (
        "query",
        {
            "TableName": "entries",
            "IndexName": "by_shard",
            "KeyConditionExpression": "shard = :s AND created_at < :c",
            "ExpressionAttributeValues": {":s": {"S": "s0"}, ":c": {"S": "2030-01-04"}},
        },
    ),
    (
        "query",
        {
            "TableName": "accounts",
            "KeyConditionExpression": "user_id = :u",
            "ExpressionAttributeValues": {":u": {"S": "u4"}},
        },
    ),
    ("scan", {"TableName": "entries", "ConsistentRead": True}),
    (
        "scan",
        {
            "TableName": "entries",
            "FilterExpression": "begins_with(entry_id, :p)",
            "ExpressionAttributeValues": {":p": {"S": "usage#"}},
        },
    ),
    ("scan", {"TableName": "accounts"}),
    ("scan", {"TableName": "numbers", "ConsistentRead": True}),
    (
        "scan",
        {
            "TableName": "numbers",
            "FilterExpression": "m > :m",
            "ExpressionAttributeValues": {":m": {"N": "0"}},
        },
    ),
]


def pages(client: Any, operation: str, request: dict[str, Any], limit: int) -> list[Any]:
    found, start = [], None
    for _ in range(500):
        kwargs = dict(request, Limit=limit)
        if start is not None:
            kwargs["ExclusiveStartKey"] = start
        page = getattr(client, operation)(**kwargs)
        page.pop("ResponseMetadata")
        found.append(page)
        start = page.get("LastEvaluatedKey")
        if start is None:
            return found
    raise AssertionError("paging did not end")


def answers(client: Any) -> list[Any]:
    paged = [
        pages(client, operation, request, limit)
        for operation, request in REQUESTS
        for limit in (3, 1000)
    ]
    keys = [{"user_id": {"S": f"u{user}"}} for user in (1, 6, 9)]
    single = [
        client.get_item(TableName="accounts", Key=keys[0], ConsistentRead=True),
        client.get_item(TableName="accounts", Key=keys[2]),
        client.get_item(
            TableName="entries",
            Key={"user_id": {"S": "u2"}, "entry_id": {"S": "usage#003"}},
            ProjectionExpression="delta, seq",
        ),
        client.batch_get_item(RequestItems={"accounts": {"Keys": keys, "ConsistentRead": True}}),
    ]
    for answer in single:
        answer.pop("ResponseMetadata")
    return [*paged, *single]


def test_every_query_and_scan_pages_exactly_as_moto_does(dynamodb: Any) -> None:
    expected = answers(dynamodb)
    assert sum(len(page["Items"]) for page in expected[0]) == 23  # the requests find data
    fast_dynamodb.install()
    assert answers(dynamodb) == expected


def outcome(client: Any, padding: int) -> str:
    """What a PutItem of an item of about `padding` bytes comes to (and what is stored)."""
    key = {"user_id": {"S": f"big{padding}"}}
    item = {**key, "a": {"S": "x" * (padding // 2)}, "b": {"S": "y" * (padding - padding // 2)}}
    try:
        client.put_item(TableName="accounts", Item=item)
    except client.exceptions.ClientError as exc:
        return f"{exc.response['Error']['Code']}: {exc.response['Error']['Message']}"
    stored = client.get_item(TableName="accounts", Key=key, ConsistentRead=True)["Item"]
    return f"stored {sum(len(v['S']) for k, v in stored.items() if k != 'user_id')}"


def test_the_item_size_limit_is_where_moto_puts_it(dynamodb: Any) -> None:
    # Around moto's 405,000-byte limit: the names and the key (18 bytes here) count too.
    sizes = (404_980, 404_981, 404_982, 404_983, 404_990, 500_000)
    expected = [outcome(dynamodb, size) for size in sizes]
    assert expected[2] == "stored 404982" and expected[3].startswith("ValidationException")
    for size in sizes:
        dynamodb.delete_item(TableName="accounts", Key={"user_id": {"S": f"big{size}"}})
    fast_dynamodb.install()
    assert [outcome(dynamodb, size) for size in sizes] == expected


def transactions(client: Any, run: str) -> list[Any]:
    """A committed transaction and four that fail (a condition, an item named twice, a bad
    key, a missing table) on two fresh tables; what each answered and what is stored after."""
    ledger, balances = f"ledger{run}", f"balances{run}"
    client.create_table(
        TableName=ledger,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "user_id", "AttributeType": "S"},
            {"AttributeName": "entry_id", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "user_id", "KeyType": "HASH"},
            {"AttributeName": "entry_id", "KeyType": "RANGE"},
        ],
    )
    client.create_table(
        TableName=balances,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "user_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "user_id", "KeyType": "HASH"}],
    )
    for user in ("a", "b"):
        client.put_item(TableName=balances, Item={"user_id": {"S": user}, "quota": {"N": "10"}})
        client.put_item(TableName=ledger, Item={"user_id": {"S": user}, "entry_id": {"S": "e0"}})

    def entry(user: str, entry_id: str) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": ledger,
                "Item": {"user_id": {"S": user}, "entry_id": {"S": entry_id}},
            }
        }

    def credit(user: str, condition: str = "attribute_exists(user_id)") -> dict[str, Any]:
        return {
            "Update": {
                "TableName": balances,
                "Key": {"user_id": {"S": user}},
                "UpdateExpression": "ADD quota :q",
                "ConditionExpression": condition,
                "ExpressionAttributeValues": {":q": {"N": "5"}},
            }
        }

    remove = {
        "Delete": {"TableName": ledger, "Key": {"user_id": {"S": "b"}, "entry_id": {"S": "e0"}}}
    }
    attempts = [
        [entry("a", "e1"), credit("a"), remove],  # commits
        [
            entry("new", "e1"),
            entry("a", "e2"),
            credit("b"),
            credit("a", "attribute_not_exists(user_id)"),
            remove,
        ],
        [entry("a", "e3"), credit("b"), credit("b")],  # the same item twice
        [
            entry("a", "e4"),
            credit("b"),
            {"Delete": {"TableName": ledger, "Key": {"user_id": {"S": "a"}}}},
        ],
        [
            entry("a", "e5"),
            credit("b"),
            {"Put": {"TableName": f"missing{run}", "Item": {"k": {"S": "x"}}}},
        ],
    ]
    answered: list[Any] = []
    for items in attempts:
        try:
            client.transact_write_items(TransactItems=items)
            answered.append("committed")
        except client.exceptions.ClientError as exc:
            error = exc.response["Error"]
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            answered.append((error["Code"], reasons))
    stored = {
        name.removesuffix(run): sorted(
            client.scan(TableName=name, ConsistentRead=True)["Items"], key=repr
        )
        for name in (ledger, balances)
    }
    counts = [client.describe_table(TableName=n)["Table"]["ItemCount"] for n in (ledger, balances)]
    return [answered, stored, counts]


def test_transactions_commit_and_roll_back_exactly_as_moto_does(dynamodb: Any) -> None:
    expected = transactions(dynamodb, "1")
    assert expected[0][0] == "committed" and all(a != "committed" for a in expected[0][1:]), (
        expected[0]
    )
    assert {"user_id": {"S": "new"}, "entry_id": {"S": "e1"}} not in expected[1]["ledger"]
    fast_dynamodb.install()
    assert transactions(dynamodb, "2") == expected
