"""DynamoDB Streams event sources and EventBridge on the local stack, as Lambda and EventBridge
run them (tests/fixtures/streams/): every committed change once and in order per key, the
images each StreamViewType gives, retries that block a key, bisection, partial batch
responses, OnFailure destinations, record age, filters, the pollers' IAM, the event buses,
their rules and the deploy-time checks. Each test would fail without the feature.

The fixture's functions write what they received to LogTable: the recorder per item key
(sequence numbers in arrival order, each record with a delivery count), the flaky consumer
per batch (its records and outcome, in invocation order), the subscriber per event.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.support.stack import ROOT, LocalStack, wait_for

FIXTURES = ROOT / "tests" / "fixtures" / "streams"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:"
ISO_SECOND = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def sx() -> Iterator[LocalStack]:
    # Refused on purpose: a stream reader without DescribeStream, a publisher without PutEvents.
    stack = LocalStack(
        "streams", expect_access_denied={"DeniedFunction", "UnpermittedPublisherFunction"}
    )
    stack.start(FIXTURES / "template.yaml", timeout=120)
    try:
        yield stack
    finally:
        stack.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def table_name(logical_id: str) -> str:
    return f"quota-local-{logical_id}"


def resource(stack: LocalStack) -> Any:
    return boto3.resource(
        "dynamodb",
        endpoint_url=stack.aws_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "max_attempts": 10}),
    )


def table(stack: LocalStack, logical_id: str) -> Any:
    return resource(stack).Table(table_name(logical_id))


def log_item(stack: LocalStack, pk: str, sk: str) -> dict[str, Any] | None:
    item: dict[str, Any] | None = (
        table(stack, "LogTable").get_item(Key={"pk": pk, "sk": sk}, ConsistentRead=True).get("Item")
    )
    return item


def log_items(stack: LocalStack, pk: str) -> list[dict[str, Any]]:
    log = table(stack, "LogTable")
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": pk},
        "ConsistentRead": True,
    }
    while True:
        page = log.query(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


# ---------------------------------------------------------------- what the recorder saw


def arrival_order(stack: LocalStack, logical_id: str, key: str) -> tuple[list[str], list[str]]:
    """(sequence numbers, sort keys) of one item key's records, in the order delivered."""
    item = log_item(stack, f"{table_name(logical_id)}#{key}", "order") or {}
    return list(item.get("seqs", [])), list(item.get("sort_keys", []))


def delivered_records(stack: LocalStack, logical_id: str, key: str) -> list[dict[str, Any]]:
    """Each record of the key as the function got it, with its delivery count, by sequence."""
    items = [
        item
        for item in log_items(stack, f"{table_name(logical_id)}#{key}")
        if item["sk"].startswith("record#")
    ]
    records = []
    for item in sorted(items, key=lambda i: int(i["sk"].split("#", 1)[1])):
        record = json.loads(item["record"])
        record["_deliveries"] = int(item["deliveries"])
        records.append(record)
    return records


def wait_for_sort_keys(
    stack: LocalStack, logical_id: str, key: str, last: str, count: int, timeout: float = 30
) -> list[str]:
    """Wait until the key's records delivered so far end with `count` of sort key `last`."""

    def done() -> list[str] | None:
        seqs, sort_keys = arrival_order(stack, logical_id, key)
        return seqs if sort_keys.count(last) >= count and sort_keys[-1] == last else None

    return wait_for(done, timeout=timeout, message=f"{logical_id} records of {key}")


# ---------------------------------------------------------------- what the flaky consumer saw


def batches(stack: LocalStack, group: str) -> list[dict[str, Any]]:
    items = [i for i in log_items(stack, f"batches#{group}") if i["sk"] != "counter"]
    return sorted(items, key=lambda i: i["sk"])


def flaky_put(stack: LocalStack, logical_id: str, group: str, sk: str, **attributes: Any) -> str:
    table(stack, logical_id).put_item(Item={"pk": group, "sk": sk, "group": group, **attributes})
    return sk


def batch_write(stack: LocalStack, logical_id: str, items: list[dict[str, Any]]) -> None:
    client = stack.boto3_client("dynamodb")
    typed = [{k: _typed(v) for k, v in item.items()} for item in items]
    response = client.batch_write_item(
        RequestItems={table_name(logical_id): [{"PutRequest": {"Item": i}} for i in typed]}
    )
    assert not response.get("UnprocessedItems"), response


def _typed(value: Any) -> dict[str, Any]:
    return {"N": str(value)} if isinstance(value, int) else {"S": str(value)}


# ---------------------------------------------------------------- failure destinations


def failure_messages(
    stack: LocalStack, queue_url: str, stream_arn: str, count: int = 1, timeout: float = 30
) -> list[dict[str, Any]]:
    """Invocation records for one stream from a queue (an SNS envelope is unwrapped); others
    are left on the queue."""
    sqs = stack.boto3_client("sqs")
    found: list[dict[str, Any]] = []

    def receive() -> list[dict[str, Any]] | None:
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in answer.get("Messages", []):
            body = json.loads(message["Body"])
            if body.get("Type") == "Notification":
                body = json.loads(body["Message"])
            if body.get("DDBStreamBatchInfo", {}).get("streamArn") == stream_arn:
                found.append(body)
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            else:
                sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
        return found if len(found) >= count else None

    return wait_for(receive, timeout=timeout, interval=0, message="an OnFailure message")


def assert_invocation_record(
    record: dict[str, Any], stack: LocalStack, table_id: str, condition: str, sequence: str
) -> None:
    assert record["version"] == "1.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])
    context = record["requestContext"]
    assert context["functionArn"] == FUNCTION_ARN + "FlakyFunction"
    assert context["condition"] == condition
    assert context["requestId"]
    info = record["DDBStreamBatchInfo"]
    assert info["streamArn"] == stack.health()["streams"][table_id]
    assert info["startSequenceNumber"] == info["endSequenceNumber"] == sequence
    assert info["batchSize"] == 1
    assert re.fullmatch(r"shardId-\d{20}-[0-9a-f]{8}", info["shardId"])
    assert ISO_SECOND.match(info["approximateArrivalOfFirstRecord"])
    assert ISO_SECOND.match(info["approximateArrivalOfLastRecord"])


# ================================================================ streams


def test_every_committed_change_reaches_the_function_once_in_order_per_key(
    sx: LocalStack,
) -> None:
    """Six keys written concurrently (ParallelizationFactor 3 over 4 shards): single writes,
    a transaction, a BatchWriteItem and deletes each give one record per changed item, in
    commit order per key; a failed conditional write, a cancelled transaction and an update
    that changes nothing give none."""
    orders = table(sx, "OrderTable")
    client = sx.boto3_client("dynamodb")
    name = table_name("OrderTable")
    keys = [unique("order") for _ in range(6)]

    def write(key: str) -> None:
        orders.put_item(Item={"pk": key, "sk": "a", "n": 0})
        for n in (1, 2, 3):
            orders.update_item(
                Key={"pk": key, "sk": "a"},
                UpdateExpression="SET n = :n",
                ExpressionAttributeValues={":n": n},
            )
        with pytest.raises(ClientError) as failed:
            orders.put_item(
                Item={"pk": key, "sk": "a", "n": 77},
                ConditionExpression="attribute_not_exists(pk)",
            )
        assert failed.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
        orders.update_item(  # the value it already has: nothing changes
            Key={"pk": key, "sk": "a"},
            UpdateExpression="SET n = :n",
            ExpressionAttributeValues={":n": 3},
        )
        client.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": name,
                        "Key": {"pk": {"S": key}, "sk": {"S": "a"}},
                        "UpdateExpression": "SET n = :n",
                        "ExpressionAttributeValues": {":n": {"N": "4"}},
                    }
                },
                {"Put": {"TableName": name, "Item": {"pk": {"S": key}, "sk": {"S": "b"}}}},
            ]
        )
        with pytest.raises(ClientError) as cancelled:
            client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": name,
                            "Key": {"pk": {"S": key}, "sk": {"S": "a"}},
                            "UpdateExpression": "SET n = :n",
                            "ExpressionAttributeValues": {":n": {"N": "99"}},
                        }
                    },
                    {
                        "ConditionCheck": {
                            "TableName": name,
                            "Key": {"pk": {"S": key}, "sk": {"S": "b"}},
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        assert cancelled.value.response["Error"]["Code"] == "TransactionCanceledException"
        client.batch_write_item(
            RequestItems={
                name: [
                    {"PutRequest": {"Item": {"pk": {"S": key}, "sk": {"S": "c"}}}},
                    {"DeleteRequest": {"Key": {"pk": {"S": key}, "sk": {"S": "b"}}}},
                ]
            }
        )
        orders.delete_item(Key={"pk": key, "sk": "a"})
        orders.delete_item(Key={"pk": key, "sk": "c"})

    errors: list[BaseException] = []

    def run(key: str) -> None:
        try:
            write(key)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors

    for key in keys:
        seqs = wait_for_sort_keys(sx, "OrderTable", key, last="c", count=2)
        assert len(seqs) == 10, seqs  # 6 changes of a, 2 of b, 2 of c; nothing else
        assert [int(s) for s in seqs] == sorted(int(s) for s in seqs)  # in commit order
        # The function logs a record's arrival before its copy: the copy may lag a moment.
        wanted = len(seqs)
        records = wait_for(
            lambda key=key, wanted=wanted: (
                found if len(found := delivered_records(sx, "OrderTable", key)) >= wanted else None
            ),
            timeout=30,
            message=f"the copies of {key}'s records",
        )
        assert [r["dynamodb"]["SequenceNumber"] for r in records] == sorted(seqs, key=int)
        assert all(r["_deliveries"] == 1 for r in records)  # each once
        by_item: dict[str, list[tuple[str, Any, Any]]] = {}
        for record in records:
            body = record["dynamodb"]
            by_item.setdefault(body["Keys"]["sk"]["S"], []).append(
                (
                    record["eventName"],
                    body.get("OldImage", {}).get("n", {}).get("N"),
                    body.get("NewImage", {}).get("n", {}).get("N"),
                )
            )
        assert by_item["a"] == [
            ("INSERT", None, "0"),
            ("MODIFY", "0", "1"),
            ("MODIFY", "1", "2"),
            ("MODIFY", "2", "3"),
            ("MODIFY", "3", "4"),  # the transaction's; never 77 or 99
            ("REMOVE", "4", None),
        ]
        assert by_item["b"] == [("INSERT", None, None), ("REMOVE", None, None)]
        assert by_item["c"] == [("INSERT", None, None), ("REMOVE", None, None)]


@pytest.mark.parametrize(
    ("logical_id", "view", "new_on", "old_on"),
    [
        ("OrderTable", "NEW_AND_OLD_IMAGES", {"INSERT", "MODIFY"}, {"MODIFY", "REMOVE"}),
        ("NewImageTable", "NEW_IMAGE", {"INSERT", "MODIFY"}, set()),
        ("OldImageTable", "OLD_IMAGE", set(), {"MODIFY", "REMOVE"}),
        ("KeysOnlyTable", "KEYS_ONLY", set(), set()),
    ],
)
def test_records_carry_the_images_their_stream_view_type_asks_for(
    sx: LocalStack, logical_id: str, view: str, new_on: set[str], old_on: set[str]
) -> None:
    key = unique("view")
    items = table(sx, logical_id)
    items.put_item(Item={"pk": key, "sk": "x", "v": 1, "blob": b"\x00\xff"})
    items.update_item(
        Key={"pk": key, "sk": "x"},
        UpdateExpression="SET v = :v",
        ExpressionAttributeValues={":v": 2},
    )
    items.delete_item(Key={"pk": key, "sk": "x"})
    wait_for(
        lambda: len(arrival_order(sx, logical_id, key)[0]) == 3,
        timeout=30,
        message="three records",
    )
    records = delivered_records(sx, logical_id, key)
    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
    versions = {"INSERT": (None, "1"), "MODIFY": ("1", "2"), "REMOVE": ("2", None)}
    stream_arn = sx.health()["streams"][logical_id]
    for record in records:
        name = record["eventName"]
        assert set(record) - {"_deliveries"} == {
            "eventID",
            "eventName",
            "eventVersion",
            "eventSource",
            "awsRegion",
            "dynamodb",
            "eventSourceARN",
        }
        assert re.fullmatch(r"[0-9a-f]{32}", record["eventID"])
        assert record["eventSource"] == "aws:dynamodb"
        assert record["awsRegion"] == "us-east-1"
        assert record["eventSourceARN"] == stream_arn
        body = record["dynamodb"]
        assert body["StreamViewType"] == view
        assert body["Keys"] == {"pk": {"S": key}, "sk": {"S": "x"}}
        assert body["SequenceNumber"].isdigit() and len(body["SequenceNumber"]) == 21
        assert isinstance(body["ApproximateCreationDateTime"], (int, float))
        assert isinstance(body["SizeBytes"], int) and body["SizeBytes"] > 0
        old, new = versions[name]
        assert ("NewImage" in body) == (name in new_on)
        assert ("OldImage" in body) == (name in old_on)
        if "NewImage" in body:
            assert body["NewImage"]["v"] == {"N": new}
            assert body["NewImage"]["blob"] == {"B": base64.b64encode(b"\x00\xff").decode()}
        if "OldImage" in body:
            assert body["OldImage"]["v"] == {"N": old}


def test_a_failing_batch_is_retried_as_it_was_and_blocks_its_key_meanwhile(
    sx: LocalStack,
) -> None:
    """MaximumRetryAttempts -1: the record fails eight times, then succeeds; records of the
    same key written during those retries come only after it, in order."""
    group = unique("retry")
    flaky_put(sx, "RetryTable", group, "1", mode="fail_times", times=8)
    wait_for(lambda: batches(sx, group), timeout=30, message="the first delivery")
    flaky_put(sx, "RetryTable", group, "2")
    flaky_put(sx, "RetryTable", group, "3")
    # Written while the first record was still being retried (else this test proves nothing).
    assert all(b["outcome"] == "error" for b in batches(sx, group))
    wait_for(
        lambda: any("3" in b["sort_keys"] and b["outcome"] == "ok" for b in batches(sx, group)),
        timeout=60,
        message="the later records",
    )
    seen = batches(sx, group)
    first = seen[0]["seqs"]
    assert [b["sort_keys"] for b in seen[:9]] == [["1"]] * 9
    assert [b["seqs"] for b in seen[:9]] == [first] * 9  # the same batch every time
    assert [b["outcome"] for b in seen[:9]] == ["error"] * 8 + ["ok"]
    later = [key for b in seen[9:] for key in b["sort_keys"]]
    assert later == ["2", "3"]
    assert all(b["outcome"] == "ok" for b in seen[9:])
    assert sx.stats()["streams"]["FlakyFunction/Retry"]["retries"] >= 8


def test_bisect_splits_a_failing_batch_down_to_the_poisoned_record(sx: LocalStack) -> None:
    """BatchSize 8, one poisoned record: halves run in order until it is alone; after its one
    retry its metadata goes to the SNS OnFailure topic; every other record got through."""
    sqs = sx.boto3_client("sqs")
    queue_url = sqs.create_queue(QueueName=unique("bisect-failures"))["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    topic = sx.health()["topics"]["FailureTopic"]
    sx.boto3_client("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    group = unique("bisect")
    batch_write(
        sx,
        "BisectTable",
        [
            {"pk": group, "sk": str(i), "group": group, "mode": "poison" if i == 5 else "ok"}
            for i in range(8)
        ],
    )
    stream = sx.health()["streams"]["BisectTable"]
    (record,) = failure_messages(sx, queue_url, stream)
    wait_for(
        lambda: any(b["sort_keys"] == ["6", "7"] for b in batches(sx, group)),
        timeout=30,
        message="the records after the poisoned one",
    )
    seen = batches(sx, group)
    assert [(b["sort_keys"], b["outcome"]) for b in seen] == [
        ([str(i) for i in range(8)], "error"),
        (["0", "1", "2", "3"], "ok"),
        (["4", "5", "6", "7"], "error"),
        (["4", "5"], "error"),
        (["4"], "ok"),
        (["5"], "error"),
        (["5"], "error"),  # MaximumRetryAttempts 1: one retry, then given up
        (["6", "7"], "ok"),
    ]
    poisoned = seen[5]["seqs"][0]
    assert_invocation_record(record, sx, "BisectTable", "RetryAttemptsExhausted", poisoned)
    assert record["requestContext"]["approximateInvokeCount"] == 2
    assert record["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }


def test_partial_batch_responses_resume_at_the_first_reported_failure(sx: LocalStack) -> None:
    group = unique("partial")
    batch_write(
        sx,
        "PartialTable",
        [
            {"pk": group, "sk": str(i), "group": group}
            | ({"mode": "report_times", "times": 1} if i in (1, 3) else {})
            for i in range(5)
        ],
    )
    wait_for(lambda: len(batches(sx, group)) >= 2, timeout=30, message="the retry")
    first, second = batches(sx, group)
    assert first["sort_keys"] == ["0", "1", "2", "3", "4"]
    assert first["outcome"] == "partial"
    assert second["sort_keys"] == ["1", "2", "3", "4"]  # from the lowest failure on
    assert second["outcome"] == "ok"

    # An itemIdentifier that is no sequence number of the batch fails the whole batch.
    bogus = unique("bogus")
    batch_write(
        sx,
        "PartialTable",
        [
            {"pk": bogus, "sk": "0", "group": bogus},
            {"pk": bogus, "sk": "1", "group": bogus, "mode": "bogus_times", "times": 1},
        ],
    )
    wait_for(lambda: len(batches(sx, bogus)) >= 2, timeout=30, message="the retry")
    first, second = batches(sx, bogus)
    assert first["sort_keys"] == second["sort_keys"] == ["0", "1"]
    assert (first["outcome"], second["outcome"]) == ("partial", "ok")


def test_after_maximum_retry_attempts_the_batch_metadata_lands_on_the_on_failure_queue(
    sx: LocalStack,
) -> None:
    group = unique("exhaust")
    flaky_put(sx, "ExhaustTable", group, "1", mode="poison")
    wait_for(lambda: batches(sx, group), timeout=30, message="the first delivery")
    flaky_put(sx, "ExhaustTable", group, "2")
    stream = sx.health()["streams"]["ExhaustTable"]
    (record,) = failure_messages(sx, sx.queue_url("ExhaustFailures"), stream)
    wait_for(
        lambda: any(b["sort_keys"] == ["2"] for b in batches(sx, group)),
        timeout=30,
        message="the record after the given-up one",
    )
    seen = batches(sx, group)
    assert [(b["sort_keys"], b["outcome"]) for b in seen] == [(["1"], "error")] * 3 + [
        (["2"], "ok")
    ]
    assert_invocation_record(
        record, sx, "ExhaustTable", "RetryAttemptsExhausted", seen[0]["seqs"][0]
    )
    assert record["requestContext"]["approximateInvokeCount"] == 3  # 1 + MaximumRetryAttempts 2
    assert record["requestContext"]["requestId"] == seen[2]["request_id"]
    assert record["responseContext"]["functionError"] == "Unhandled"


def test_records_older_than_maximum_record_age_are_given_up(sx: LocalStack) -> None:
    group = unique("age")
    flaky_put(sx, "AgeTable", group, "1", mode="poison")  # retried until too old
    stream = sx.health()["streams"]["AgeTable"]
    (record,) = failure_messages(sx, sx.queue_url("ExhaustFailures"), stream)
    seen = batches(sx, group)
    assert seen and all(b["outcome"] == "error" for b in seen)
    assert_invocation_record(record, sx, "AgeTable", "RecordAgeExceeded", seen[0]["seqs"][0])
    assert record["requestContext"]["approximateInvokeCount"] >= 1


def test_filter_criteria_drop_records_before_the_function(sx: LocalStack) -> None:
    """Pattern: INSERTs whose NewImage has kind "wanted"; the others never reach it."""
    before = sx.stats()["streams"]["RecorderFunction/Filtered"]["filtered"]
    key = unique("filter")
    items = table(sx, "FilterTable")
    items.put_item(Item={"pk": key, "sk": "a", "kind": "other"})
    items.put_item(Item={"pk": key, "sk": "b", "kind": "wanted"})
    items.update_item(
        Key={"pk": key, "sk": "b"},
        UpdateExpression="SET v = :v",
        ExpressionAttributeValues={":v": 1},
    )
    items.put_item(Item={"pk": key, "sk": "c", "kind": "wanted"})
    wait_for_sort_keys(sx, "FilterTable", key, last="c", count=1)
    _, sort_keys = arrival_order(sx, "FilterTable", key)
    assert sort_keys == ["b", "c"]  # same key, same lane: the others were dropped, not late
    assert [r["eventName"] for r in delivered_records(sx, "FilterTable", key)] == [
        "INSERT",
        "INSERT",
    ]
    assert sx.stats()["streams"]["RecorderFunction/Filtered"]["filtered"] >= before + 2


def test_a_function_whose_role_may_not_read_its_stream_gets_access_denied(
    sx: LocalStack,
) -> None:
    stream = sx.health()["streams"]["DeniedTable"]

    def denials() -> list[dict[str, Any]]:
        return [d for d in sx.iam()["denials"] if d["function"] == "DeniedFunction"]

    refused = wait_for(denials, timeout=15, message="the poller's AccessDenied")
    assert refused[0]["action"] == "dynamodb:DescribeStream"
    assert refused[0]["resource"] == stream
    assert refused[0]["operation"] == "dynamodbstreams.DescribeStream"
    log = sx.log_text()
    assert f"IAM AccessDenied: DeniedFunction may not dynamodb:DescribeStream on {stream}" in log
    assert f"Cannot access stream {stream}" in log
    state = sx.health()["stream_pollers"]["DeniedFunction/Denied"]["state"]
    assert "AccessDeniedException" in state

    table(sx, "DeniedTable").put_item(Item={"pk": unique("denied"), "sk": "x"})
    count = len(denials())
    wait_for(lambda: len(denials()) > count, timeout=15, message="the poller's next attempt")
    assert sx.stats()["invocations"].get("DeniedFunction", 0) == 0


def test_a_role_scoped_to_its_stream_arn_reads_it(sx: LocalStack) -> None:
    """GetRecords is authorized on the stream its shard iterator belongs to, so a policy on
    the stream's ARN alone (no managed policy, no wildcard) is enough."""
    key = unique("scoped")
    table(sx, "ScopedTable").put_item(Item={"pk": key, "sk": "x"})
    wait_for_sort_keys(sx, "ScopedTable", key, last="x", count=1)
    assert not [d for d in sx.iam()["denials"] if d["function"] == "ScopedFunction"]
    allowed = sx.iam()["functions"]["ScopedFunction"]["allowed"]
    assert allowed["dynamodb:GetRecords"] >= 1
    assert allowed["dynamodb:DescribeStream"] >= 1


def test_the_streams_api_reads_what_the_pollers_read(sx: LocalStack) -> None:
    """The DynamoDB Streams API itself (as a tool or a test would use it): shards, iterators
    at TRIM_HORIZON and LATEST, records after a sequence number, errors."""
    streams = sx.boto3_client("dynamodbstreams")
    arn = sx.health()["streams"]["KeysOnlyTable"]
    listed = streams.list_streams(TableName=table_name("KeysOnlyTable"))["Streams"]
    assert [s["StreamArn"] for s in listed] == [arn]
    description = streams.describe_stream(StreamArn=arn)["StreamDescription"]
    assert description["StreamStatus"] == "ENABLED"
    assert description["StreamViewType"] == "KEYS_ONLY"
    assert description["TableName"] == table_name("KeysOnlyTable")
    shards = [s["ShardId"] for s in description["Shards"]]
    assert len(shards) == 4
    latest = {
        shard: streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")[
            "ShardIterator"
        ]
        for shard in shards
    }
    key = unique("api")
    table(sx, "KeysOnlyTable").put_item(Item={"pk": key, "sk": "x"})
    found = [
        record
        for shard in shards
        for record in streams.get_records(ShardIterator=latest[shard])["Records"]
    ]
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in found] == [key]
    sequence = found[0]["dynamodb"]["SequenceNumber"]
    shard = next(s for s in shards if streams.get_records(ShardIterator=latest[s])["Records"])
    after = streams.get_shard_iterator(
        StreamArn=arn,
        ShardId=shard,
        ShardIteratorType="AFTER_SEQUENCE_NUMBER",
        SequenceNumber=sequence,
    )["ShardIterator"]
    assert streams.get_records(ShardIterator=after)["Records"] == []
    with pytest.raises(ClientError) as unknown:
        streams.describe_stream(StreamArn=arn.replace("KeysOnlyTable", "NoSuchTable"))
    assert unknown.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as garbled:
        streams.get_records(ShardIterator=f"{arn}|1|garbled")
    assert garbled.value.response["Error"]["Code"] == "ValidationException"


def test_health_and_stats_show_the_stream_pollers(sx: LocalStack) -> None:
    health = sx.health()
    pollers = health["stream_pollers"]
    assert pollers["RecorderFunction/Order"]["parallelization_factor"] == 3
    assert pollers["RecorderFunction/Order"]["shards"] == 4
    assert pollers["RecorderFunction/NewImage"]["starting_position"] == "LATEST"
    assert pollers["FlakyFunction/Exhaust"]["on_failure"].endswith(":quota-local-ExhaustFailures")
    assert health["streams"]["OrderTable"].startswith(
        "arn:aws:dynamodb:us-east-1:123456789012:table/quota-local-OrderTable/stream/"
    )
    key = unique("stats")
    before = sx.stats()
    table(sx, "KeysOnlyTable").put_item(Item={"pk": key, "sk": "x"})
    wait_for_sort_keys(sx, "KeysOnlyTable", key, last="x", count=1)
    after = sx.stats()
    name = table_name("KeysOnlyTable")
    assert after["stream_records"][name] == before["stream_records"].get(name, 0) + 1
    assert after["streams"]["RecorderFunction/KeysOnly"]["delivered"] >= 1


# ================================================================ EventBridge


def publish(stack: LocalStack, function: str, *entries: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = stack.invoke(
        function,
        {
            "entries": [
                {**entry, "Detail": json.dumps(entry["Detail"])} if "Detail" in entry else entry
                for entry in entries
            ]
        },
    )
    return result


def received(stack: LocalStack, marker: str) -> list[dict[str, Any]]:
    return [json.loads(item["event"]) for item in log_items(stack, f"received#{marker}")]


def test_put_events_lands_in_local_events(sx: LocalStack) -> None:
    marker = unique("put")
    result = publish(
        sx,
        "PublisherFunction",
        {"Source": "quota.test", "DetailType": "first", "Detail": {"marker": marker, "n": 1}},
        {"Source": "quota.other", "DetailType": "second", "Detail": {"marker": marker, "n": 2}},
    )
    assert result["FailedEntryCount"] == 0
    ids = [entry["EventId"] for entry in result["Entries"]]
    # The tests' own client (the account's admin) puts one on the bus by its ARN.
    bus_arn = "arn:aws:events:us-east-1:123456789012:event-bus/quota-local-billing"
    direct = sx.boto3_client("events").put_events(
        Entries=[
            {
                "EventBusName": bus_arn,
                "Source": "quota.test",
                "DetailType": "third",
                "Detail": json.dumps({"marker": marker, "n": 3}),
                "Resources": ["arn:aws:dynamodb:us-east-1:123456789012:table/x"],
            }
        ]
    )
    ids.append(direct["Entries"][0]["EventId"])

    mine = [e for e in sx.events() if e["event"]["detail"].get("marker") == marker]
    assert [e["event"]["id"] for e in mine] == list(reversed(ids))  # newest first
    third = mine[0]
    assert third["bus"] == "quota-local-billing"
    assert set(third["event"]) == {
        "version",
        "id",
        "detail-type",
        "source",
        "account",
        "time",
        "region",
        "resources",
        "detail",
    }
    assert third["event"]["version"] == "0"
    assert third["event"]["account"] == "123456789012"
    assert third["event"]["region"] == "us-east-1"
    assert ISO_SECOND.match(third["event"]["time"])
    assert third["event"]["resources"] == ["arn:aws:dynamodb:us-east-1:123456789012:table/x"]
    assert third["event"]["detail"] == {"marker": marker, "n": 3}

    assert [e["event"]["id"] for e in sx.events(type="second")][:1] == [ids[1]]
    assert all(e["event"]["source"] == "quota.test" for e in sx.events(source="quota.test"))
    assert ids[0] in [e["event"]["id"] for e in sx.events(source="quota.test")]
    assert [e["event"]["id"] for e in sx.events(limit=1)] == [ids[2]]
    assert sx.request("GET", "/_local/events?limit=0").status_code == 400
    assert sx.request("GET", "/_local/events?limit=abc").status_code == 400
    assert sx.request("GET", "/_local/events?colour=red").status_code == 400
    sx.clear_events()
    assert sx.events() == []
    assert sx.request("GET", "/_local/events").json()["total"] == 0


def test_rules_deliver_matching_events_to_their_targets_and_nothing_else(sx: LocalStack) -> None:
    low, depleted, positive, high, unpermitted = (
        unique(m) for m in ("low", "dep", "pos", "hi", "np")
    )
    before = sx.stats()["events"]
    result = publish(
        sx,
        "PublisherFunction",
        {"Source": "quota.billing", "DetailType": "balance.low", "Detail": {"marker": low}},
        {
            "Source": "quota.billing",
            "DetailType": "balance.depleted",
            "Detail": {"marker": depleted, "balance": 0},
        },
        {
            "Source": "quota.billing",
            "DetailType": "balance.depleted",
            "Detail": {"marker": positive, "balance": 5},  # the rule wants balance <= 0
        },
        {"Source": "quota.billing", "DetailType": "balance.high", "Detail": {"marker": high}},
        {
            "Source": "quota.billing",
            "DetailType": "balance.unpermitted",
            "Detail": {"marker": unpermitted},
        },
    )
    ids = [entry["EventId"] for entry in result["Entries"]]
    after = sx.stats()["events"]
    assert after["put"] - before["put"] == 5
    assert after["delivered"] - before["delivered"] == 2  # routing is done when PutEvents returns
    assert after["undelivered"] - before["undelivered"] == 1

    (got_low,) = wait_for(lambda: received(sx, low), timeout=30, message="balance.low")
    assert got_low["id"] == ids[0]
    assert got_low["detail-type"] == "balance.low"
    assert got_low["detail"] == {"marker": low}
    (got_depleted,) = wait_for(lambda: received(sx, depleted), timeout=30, message="depleted")
    assert got_depleted == {"marker": depleted, "balance": 0}  # InputPath $.detail

    rules = {e["event"]["id"]: e["rules"] for e in sx.events(limit=20)}
    assert rules[ids[0]] == ["quota-local-SubscriberFunctionLow"]
    assert rules[ids[1]] == ["quota-local-DepletedRule"]
    assert rules[ids[2]] == rules[ids[3]] == []
    assert rules[ids[4]] == ["quota-local-UnpermittedRule"]
    assert "no AWS::Lambda::Permission lets events.amazonaws.com invoke SubscriberFunction" in (
        sx.log_text()
    )
    for marker in (positive, high, unpermitted):
        assert received(sx, marker) == []


def test_put_events_without_permission_is_access_denied(sx: LocalStack) -> None:
    marker = unique("denied")
    result = publish(
        sx,
        "UnpermittedPublisherFunction",
        {"Source": "quota.billing", "DetailType": "balance.low", "Detail": {"marker": marker}},
    )
    bus = "arn:aws:events:us-east-1:123456789012:event-bus/quota-local-billing"
    assert result["error"] == "AccessDeniedException"
    assert result["message"] == (
        "User: arn:aws:sts::123456789012:assumed-role/quota-local-UnpermittedPublisherFunctionRole/"
        f"UnpermittedPublisherFunction is not authorized to perform: events:PutEvents on resource: "
        f"{bus} because no identity-based policy allows the events:PutEvents action"
    )
    assert not [e for e in sx.events(limit=1000) if e["event"]["detail"].get("marker") == marker]
    denial = [d for d in sx.iam()["denials"] if d["function"] == "UnpermittedPublisherFunction"]
    assert denial[-1]["resource"] == bus
    assert denial[-1]["operation"] == "events.PutEvents"


def test_health_lists_the_buses_and_rules(sx: LocalStack) -> None:
    health = sx.health()
    assert health["event_buses"] == {"BillingBus": "quota-local-billing"}
    rules = {rule["rule"]: rule for rule in health["event_rules"]}
    assert set(rules) == {
        "quota-local-SubscriberFunctionLow",
        "quota-local-DepletedRule",
        "quota-local-UnpermittedRule",
    }
    assert rules["quota-local-DepletedRule"]["targets"] == [
        f"subscriber: lambda {FUNCTION_ARN}SubscriberFunction"
    ]
    assert "not delivered" in rules["quota-local-UnpermittedRule"]["targets"][0]
    assert sorted(health["skipped_resources"]) == [
        "WebhookConnection",
        "WebhookDestination",
        "WebhookRole",
        "WebhookRule",
    ]


def test_a_rule_whose_target_is_an_api_destination_does_not_break_the_start() -> None:
    """With the webhook example switched on, its rule exists but its API destination is not a
    target the stack can run: the stack starts, records what the rule matches, says so."""
    # The fixture's DeniedFunction is refused its stream here too, on purpose.
    with LocalStack("streams-webhooks", expect_access_denied={"DeniedFunction"}) as stack:
        stack.start(FIXTURES / "template.yaml", parameters={"WebhooksEnabled": "true"}, timeout=120)
        rules = {rule["rule"]: rule for rule in stack.health()["event_rules"]}
        assert rules["quota-local-WebhookRule"]["targets"] == []
        assert "WebhookRule: target 'webhook'" in stack.log_text()
        marker = unique("hook")
        publish(
            stack,
            "PublisherFunction",
            {"Source": "quota.billing", "DetailType": "balance.high", "Detail": {"marker": marker}},
        )
        (event,) = [e for e in stack.events() if e["event"]["detail"]["marker"] == marker]
        assert event["rules"] == ["quota-local-WebhookRule"]


# ================================================================ deploy-time checks


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "stream_on_table_without_stream",
            "Table has no StreamSpecification, so it has no stream",
        ),
        (
            "stream_batch_size_over_10000",
            "Value '10001' at 'batchSize' failed to satisfy constraint: Member must have value "
            "between 1 and 10000",
        ),
        (
            "stream_parallelization_over_10",
            "Value '11' at 'parallelizationFactor' failed to satisfy constraint",
        ),
        ("stream_bad_filter_pattern", "Invalid filter pattern definition."),
        ("sqs_with_on_failure", "Unsupported DestinationConfig parameter for given event source"),
        ("rule_on_missing_bus", "Event bus nope does not exist."),
    ],
)
def test_a_template_aws_would_not_deploy_fails_the_start(template: str, message: str) -> None:
    path: Path = FIXTURES / "invalid" / f"{template}.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "local", "--port", "0", "--template", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert "the local stack could not start" in result.stderr
    assert message in result.stderr
