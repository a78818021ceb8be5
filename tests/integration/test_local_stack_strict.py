"""The local stack is as strict as AWS: each test shows the stack refusing, lagging or
reordering where AWS does (and would have passed on the lenient stack it replaces).

On tests/fixtures/strict/template.yaml, started with every strictness on; a few windows are
widened so that "the same instant" can be hit on purpose (index lag 2 s, transactions held
0.8 s), duplicates made frequent (SQS 0.3, schedules always) and the seed fixed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from local.deploy_checks import schedule_problem
from tests.support.stack import ROOT, LambdaFunctionError, LocalStack, wait_for

FIXTURES = ROOT / "tests" / "fixtures" / "strict"
TABLE = "quota-local-RecordsTable"
INDEX_LAG = 2.0  # seconds, LOCAL_INDEX_LAG_MS below
STANDARD_VISIBILITY = 300 * 0.01  # the StandardQueue's VisibilityTimeout in fast mode
BIG = "x" * 390_000  # close to the 400 KB item limit: 381 write units, 96 strong read units


@pytest.fixture(scope="module")
def sx() -> Iterator[LocalStack]:
    stack = LocalStack("strict")
    stack.start(
        FIXTURES / "template.yaml",
        env={
            "LOCAL_SEED": "21",
            "LOCAL_INDEX_LAG_MS": str(int(INDEX_LAG * 1000)),
            "LOCAL_TRANSACTION_MS": "800",
            "LOCAL_SQS_DUPLICATE_PROBABILITY": "0.3",
            "LOCAL_SCHEDULE_DUPLICATE_PROBABILITY": "1",
            "LOCAL_SCHEDULES": "0",
        },
        timeout=120,
    )
    try:
        yield stack
    finally:
        stack.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def no_retries(stack: LocalStack) -> Any:
    return stack.boto3_client("dynamodb", retries={"total_max_attempts": 1})


def consistent(stack: LocalStack, pk: str, sk: str) -> dict[str, Any] | None:
    item: dict[str, Any] | None = (
        stack.boto3_client("dynamodb")
        .get_item(TableName=TABLE, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True)
        .get("Item")
    )
    return item


def by_kind(client: Any, kind: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.query(
        TableName=TABLE,
        IndexName="by_kind",
        KeyConditionExpression="kind = :k",
        ExpressionAttributeValues={":k": {"S": kind}},
    )["Items"]
    return items


# ---------------------------------------------------------------- DynamoDB: lagging reads


def test_index_and_eventually_consistent_reads_lag_behind_a_write(sx: LocalStack) -> None:
    client = no_retries(sx)
    pk, kind = unique("lag"), unique("kind")
    key = {"pk": {"S": pk}, "sk": {"S": "a"}}
    client.put_item(
        TableName=TABLE, Item={**key, "kind": {"S": kind}, "rank": {"N": "1"}, "v": {"N": "1"}}
    )

    # Younger than the lag: invisible to the GSI and to every read that does not insist.
    assert by_kind(client, kind) == []
    assert "Item" not in client.get_item(TableName=TABLE, Key=key)
    batch = client.batch_get_item(RequestItems={TABLE: {"Keys": [key]}})
    assert batch["Responses"][TABLE] == []
    base = {"KeyConditionExpression": "pk = :p", "ExpressionAttributeValues": {":p": {"S": pk}}}
    assert client.query(TableName=TABLE, **base)["Items"] == []
    assert client.query(TableName=TABLE, IndexName="by_rank", **base)["Items"] == []
    # Strongly consistent reads of the table and of the LSI see it at once.
    assert client.get_item(TableName=TABLE, Key=key, ConsistentRead=True)["Item"]["v"] == {"N": "1"}
    assert len(client.query(TableName=TABLE, ConsistentRead=True, **base)["Items"]) == 1
    lsi = client.query(TableName=TABLE, IndexName="by_rank", ConsistentRead=True, **base)
    assert len(lsi["Items"]) == 1
    # DynamoDB never reads a GSI strongly.
    with pytest.raises(ClientError) as refused:
        client.query(
            TableName=TABLE,
            IndexName="by_kind",
            KeyConditionExpression="kind = :k",
            ExpressionAttributeValues={":k": {"S": kind}},
            ConsistentRead=True,
        )
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "Consistent reads are not supported on global secondary indexes" in str(refused.value)

    wait_for(lambda: by_kind(client, kind), timeout=INDEX_LAG * 5, message="the GSI to catch up")

    # A change reads old until the lag has passed; a consistent read is current.
    client.update_item(
        TableName=TABLE,
        Key=key,
        UpdateExpression="SET v = :v",
        ExpressionAttributeValues={":v": {"N": "2"}},
    )
    assert client.get_item(TableName=TABLE, Key=key)["Item"]["v"] == {"N": "1"}
    assert by_kind(client, kind)[0]["v"] == {"N": "1"}
    assert client.get_item(TableName=TABLE, Key=key, ConsistentRead=True)["Item"]["v"] == {"N": "2"}
    wait_for(
        lambda: client.get_item(TableName=TABLE, Key=key)["Item"]["v"] == {"N": "2"},
        timeout=INDEX_LAG * 5,
        message="the eventually consistent read to catch up",
    )


# ---------------------------------------------------------------- DynamoDB: throttling


def test_a_hot_partition_key_is_throttled_as_on_demand_dynamodb_does(sx: LocalStack) -> None:
    client = no_retries(sx)
    pk = unique("hot")

    def put(index: int) -> ClientError | None:
        try:
            client.put_item(
                TableName=TABLE, Item={"pk": {"S": pk}, "sk": {"S": str(index)}, "b": {"S": BIG}}
            )
        except ClientError as exc:
            return exc
        return None

    # 381 units each against 1000 a second (sent four at a time, so that a busy machine's
    # slow client cannot pace them under the limit).
    with ThreadPoolExecutor(max_workers=4) as pool:
        errors = [e for e in pool.map(put, range(30)) if e is not None]
    throttled = errors[0] if errors else None
    assert throttled is not None, "30 large writes to one partition key were never throttled"
    error = throttled.response["Error"]
    assert error["Code"] == "ThrottlingException"
    assert "check if you have a hot key" in error["Message"]
    reasons = throttled.response["throttlingReasons"]
    assert reasons[0]["reason"] == "TableWriteKeyRangeThroughputExceeded"
    assert reasons[0]["resource"].endswith(f":table/{TABLE}")
    # Another partition key has its own throughput.
    client.put_item(TableName=TABLE, Item={"pk": {"S": unique("cold")}, "sk": {"S": "0"}})
    # The SDK retries throttling with backoff (as against AWS), so a default client gets through.
    sx.boto3_client("dynamodb").put_item(
        TableName=TABLE, Item={"pk": {"S": pk}, "sk": {"S": "after"}, "b": {"S": BIG}}
    )


def test_batch_writes_to_a_hot_gsi_partition_come_back_unprocessed(sx: LocalStack) -> None:
    client = no_retries(sx)
    kind = unique("hotkind")
    requests = [
        {
            "PutRequest": {
                "Item": {
                    "pk": {"S": unique("g")},
                    "sk": {"S": "x"},
                    "kind": {"S": kind},
                    "b": {"S": BIG},
                }
            }
        }
        for _ in range(10)
    ]
    answer = client.batch_write_item(RequestItems={TABLE: requests})
    left = answer["UnprocessedItems"].get(TABLE, [])
    # The GSI's partition takes two or three of these a second: the rest is handed back.
    assert 0 < len(left) < len(requests)
    for _ in range(100):
        if not left:
            break
        time.sleep(0.2)  # back off, as the SDKs advise for unprocessed items
        try:
            left = client.batch_write_item(RequestItems={TABLE: left})["UnprocessedItems"].get(
                TABLE, []
            )
        except ClientError as exc:  # nothing at all could be written this time
            assert exc.response["Error"]["Code"] == "ThrottlingException"
    assert not left
    for request in requests:
        item = request["PutRequest"]["Item"]
        assert consistent(sx, item["pk"]["S"], "x") is not None


def test_batch_reads_of_a_hot_partition_come_back_unprocessed(sx: LocalStack) -> None:
    client = no_retries(sx)
    pk = unique("hotread")
    keys = [{"pk": {"S": pk}, "sk": {"S": f"{i:02}"}} for i in range(10)]
    writer = sx.boto3_client("dynamodb")  # with retries: 10 x 381 units take four seconds
    for key in keys:
        writer.put_item(TableName=TABLE, Item={**key, "b": {"S": BIG}})

    def read(_: int) -> list[dict[str, Any]]:
        try:
            # Capacity counts whole items; the projection only keeps the answers small.
            answer = client.batch_get_item(
                RequestItems={
                    TABLE: {"Keys": keys, "ConsistentRead": True, "ProjectionExpression": "sk"}
                }
            )
        except ClientError as exc:  # nothing at all could be read this time
            assert exc.response["Error"]["Code"] == "ThrottlingException"
            return []
        left: list[dict[str, Any]] = answer["UnprocessedKeys"].get(TABLE, {}).get("Keys", [])
        if left:
            assert answer["UnprocessedKeys"][TABLE]["ConsistentRead"] is True
            assert len(answer["Responses"][TABLE]) + len(left) == len(keys)
        return left

    with ThreadPoolExecutor(max_workers=4) as pool:  # 10 x 96 units a call, 3000 a second
        unprocessed = [key for left in pool.map(read, range(40)) for key in left]
    assert unprocessed, "40 large batch reads of one partition key were never throttled"


# ---------------------------------------------------------------- DynamoDB: transactions


def test_writes_to_an_item_a_transaction_holds_conflict(sx: LocalStack) -> None:
    client = no_retries(sx)
    key = {"pk": {"S": unique("tx")}, "sk": {"S": "account"}}
    bump = {
        "Update": {
            "TableName": TABLE,
            "Key": key,
            "UpdateExpression": "ADD n :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
    }
    worker = sx.boto3_client("dynamodb")
    committed = threading.Thread(target=lambda: worker.transact_write_items(TransactItems=[bump]))
    committed.start()
    wait_for(
        lambda: sx.stats()["strict"]["dynamodb"]["items_in_transactions"] > 0,
        interval=0.02,
        message="the transaction to be under way",
    )
    try:
        # A single-item write meets TransactionConflictException, which the SDK does not
        # retry: even a client with retries gets it.
        with pytest.raises(ClientError) as conflict:
            sx.boto3_client("dynamodb").put_item(TableName=TABLE, Item={**key, "n": {"N": "9"}})
        assert conflict.value.response["Error"]["Code"] == "TransactionConflictException"
        # A colliding transaction is cancelled, the conflicting item named in its reasons.
        other = {"Put": {"TableName": TABLE, "Item": {"pk": {"S": unique("tx")}, "sk": {"S": "x"}}}}
        with pytest.raises(ClientError) as cancelled:
            client.transact_write_items(TransactItems=[other, bump])
        assert cancelled.value.response["Error"]["Code"] == "TransactionCanceledException"
        codes = [r["Code"] for r in cancelled.value.response["CancellationReasons"]]
        assert codes == ["None", "TransactionConflict"]
        # A GetItem is not held up: it sees the item as it was.
        assert "Item" not in client.get_item(TableName=TABLE, Key=key, ConsistentRead=True)
    finally:
        committed.join()
    assert consistent(sx, key["pk"]["S"], "account") == {**key, "n": {"N": "1"}}


# ---------------------------------------------------------------- SQS event sources


def send(stack: LocalStack, queue: str, bodies: list[dict[str, Any]], **extra: Any) -> None:
    sqs = stack.boto3_client("sqs")
    for start in range(0, len(bodies), 10):
        entries = [
            {"Id": str(i), "MessageBody": json.dumps(body), **extra.get(body["id"], {})}
            for i, body in enumerate(bodies[start : start + 10])
        ]
        answer = sqs.send_message_batch(QueueUrl=stack.queue_url(queue), Entries=entries)
        assert not answer.get("Failed")


def deliveries(stack: LocalStack, message_id: str) -> dict[str, Any] | None:
    return consistent(stack, message_id, "deliveries")


def test_standard_queue_reorders_redelivers_and_runs_batches_at_once(sx: LocalStack) -> None:
    prefix = unique("std")
    bodies = [{"id": f"{prefix}-{n:02}", "n": n} for n in range(30)]
    send(sx, "StandardQueue", bodies)
    records = wait_for(
        lambda: found if all(found := [deliveries(sx, b["id"]) for b in bodies]) else None,
        timeout=60,
        message="every message delivered",
    )
    first = [int(r["order"]["L"][0]["N"]) for r in records]  # in the order they were sent
    assert first != sorted(first), "30 messages were delivered exactly in the order sent"
    # Some were delivered twice: the same SQS message (same MessageId), a later batch.
    twice = [r for r in records if int(r["deliveries"]["N"]) >= 2]
    assert twice
    for record in twice:
        assert len({m["S"] for m in record["message_ids"]["L"]}) == 1
    stats = sx.stats()["pollers"]["RecorderFunction/Standard"]
    assert stats["duplicates"] >= len(twice) and stats["held_back"] > 0
    # Several batches ran at the same time.
    assert int(consistent(sx, "recorder", "peak")["n"]["N"]) >= 2  # type: ignore[index]


def test_failed_message_comes_back_after_the_queue_visibility_timeout(sx: LocalStack) -> None:
    message_id = unique("flaky")
    send(sx, "StandardQueue", [{"id": message_id, "n": 0, "mode": "flaky"}])
    record = wait_for(
        lambda: (r := deliveries(sx, message_id)) and 2 in _attempts(r) and r,
        timeout=60,
        message="the failed message's second receive",
    )
    times = [float(t["S"]) for t in record["times"]["L"]]
    attempts = _attempts(record)
    gap = times[attempts.index(2)] - times[attempts.index(1)]
    # Back no sooner than the queue's VisibilityTimeout (3 s in fast mode), not after the 1 s
    # the lenient stack used. The times are the handler's, not the receives': the first
    # handling may start up to a second after its receive on a busy machine (worker start).
    assert gap > STANDARD_VISIBILITY - 1.0, gap


def _attempts(record: dict[str, Any]) -> list[int]:
    return [int(a["N"]) for a in record["attempts"]["L"]]


def test_fifo_queue_keeps_each_group_in_order_and_delivers_once(sx: LocalStack) -> None:
    prefix = unique("fifo")
    bodies, extra = [], {}
    for group in ("g1", "g2"):
        for n in range(10):
            body = {"id": f"{prefix}-{group}-{n}", "n": n}
            bodies.append(body)
            extra[body["id"]] = {
                "MessageGroupId": f"{prefix}-{group}",
                "MessageDeduplicationId": body["id"],
            }
    send(sx, "OrderedQueue", bodies, **extra)
    records = wait_for(
        lambda: found if all(found := [deliveries(sx, b["id"]) for b in bodies]) else None,
        timeout=60,
        message="every FIFO message delivered",
    )
    by_group: dict[str, list[tuple[int, int]]] = {}
    for record in records:
        assert record["deliveries"] == {"N": "1"}
        by_group.setdefault(record["grp"]["S"], []).append(
            (int(record["order"]["L"][0]["N"]), int(record["n"]["N"]))
        )
    for delivered in by_group.values():
        assert [n for _, n in sorted(delivered)] == list(range(10))


# ---------------------------------------------------------------- Lambda


def test_workers_run_python_3_12_over_the_built_layer(sx: LocalStack) -> None:
    probe = sx.invoke("ProbeFunction", {"action": "runtime"})
    assert probe["version"] == [3, 12]
    assert ".venv" not in probe["executable"]
    cache = str(ROOT / ".lambda-runtime")
    # The layer's dependencies as its build installs them for 3.12; the domain from source.
    assert probe["pydantic_core"].startswith(f"{cache}/python3.12-layer-common-")
    assert probe["billing"] == str(ROOT / "layers" / "common" / "billing" / "__init__.py")
    # boto3/botocore come with the runtime, after the layers; nothing of the dev venv.
    assert probe["boto3"].startswith(f"{cache}/python3.12-runtime-")
    assert probe["botocore"].startswith(f"{cache}/python3.12-runtime-")
    assert probe["moto"] is None and probe["pytest"] is None
    assert not any(".venv" in path or "site-packages" in path for path in probe["sys_path"])
    # A function without the layer has none of its dependencies.
    assert sx.invoke("SmallFunction", {"action": "runtime"})["pydantic_core"] is None


def test_memory_size_is_a_hard_limit(sx: LocalStack) -> None:
    with pytest.raises(LambdaFunctionError) as killed:
        sx.invoke("SmallFunction", {"action": "allocate", "mb": 300})
    assert killed.value.error_type == "Runtime.OutOfMemory"
    assert "Runtime exited with error: signal: killed" in killed.value.payload["errorMessage"]
    wait_for(lambda: "Runtime.OutOfMemory" in sx.log_text(), message="the OOM in the log")
    # The next invocation gets a fresh worker; within the limit all is well.
    assert sx.invoke("SmallFunction", {"action": "allocate", "mb": 16, "hold": 0.2}) == {
        "allocated": 16 * 1024 * 1024
    }
    assert sx.invoke("ProbeFunction", {"action": "allocate", "mb": 64, "hold": 0.2})


def test_an_invocation_over_half_its_timeout_is_warned_about(sx: LocalStack) -> None:
    warning = "more than half of its Timeout (2 s)"
    before = sx.log_text().count(warning)
    sx.invoke("ShortFunction", {"action": "sleep", "seconds": 0.1})
    sx.invoke("ShortFunction", {"action": "sleep", "seconds": 1.3})
    wait_for(lambda: sx.log_text().count(warning) == before + 1, message="one warning")
    assert "[ShortFunction] WARNING: invocation" in sx.log_text()


def attempts_of(stack: LocalStack, event_id: str) -> int:
    item = consistent(stack, f"async#{event_id}", "attempts")
    return int(item["n"]["N"]) if item else 0


def test_async_invocations_are_retried_twice(sx: LocalStack) -> None:
    always, once = unique("always"), unique("once")
    for payload in (
        {"action": "fail", "id": always},
        {"action": "fail", "id": once, "fail_times": 1},
    ):
        assert sx.invoke_raw("ProbeFunction", payload, "Event")["StatusCode"] == 202
    # Lambda's delays (1 min, then 2 min) at 1/100.
    wait_for(lambda: attempts_of(sx, always) == 3, timeout=30, message="three attempts")
    wait_for(lambda: attempts_of(sx, once) == 2, timeout=30, message="a successful retry")
    wait_for(lambda: "discarded after 3 attempts" in sx.log_text(), message="the discarded event")
    time.sleep(2)  # longer than another retry would take
    assert attempts_of(sx, always) == 3 and attempts_of(sx, once) == 2
    # EventInvokeConfig.MaximumRetryAttempts: 0 means one attempt only.
    never = unique("never")
    sx.invoke_raw("OnceFunction", {"action": "fail", "id": never}, "Event")
    wait_for(lambda: attempts_of(sx, never) == 1, timeout=30, message="one attempt")
    time.sleep(1.5)
    assert attempts_of(sx, never) == 1


# ---------------------------------------------------------------- schedules and deploy checks


def test_a_schedule_can_be_delivered_twice(sx: LocalStack) -> None:
    response = sx.run_schedule("ProbeFunction", "Tick")
    assert response.status_code == 200, response.text
    event_id = response.json()["id"]
    item = consistent(sx, f"schedule#{event_id}", "n")
    assert item is not None and item["n"] == {"N": "2"}  # the same event, twice
    assert sx.stats()["strict"]["schedule_duplicates"]["ProbeFunction/Tick"] >= 1


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "visibility_below_timeout",
            "Queue visibility timeout: 20 seconds is less than Function timeout: 60 seconds",
        ),
        ("fifo_batch_over_10", "for FIFO queues the maximum batch size is 10"),
        (
            "batch_without_window",
            "Maximum batch window in seconds must be greater than 0 if maximum batch size is "
            "greater than 10",
        ),
        ("rate_one_minutes", "Parameter ScheduleExpression is not valid. rate(1 minutes)"),
        ("rate_five_minute", "Parameter ScheduleExpression is not valid. rate(5 minute)"),
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
    assert "the template would not deploy to AWS" in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    ("expression", "valid"),
    [
        ("rate(1 minute)", True),
        ("rate(5 minutes)", True),
        ("rate(1 hour)", True),
        ("rate(2 days)", True),
        ("rate(1 minutes)", False),
        ("rate(5 minute)", False),
        ("rate(0 minutes)", False),
        ("rate(1 week)", False),
        ("cron(0 12 * * ? *)", True),
        ("cron(0 12 * * *)", False),
        ("cron(0 12 1 * MON *)", False),
        ("every minute", False),
    ],
)
def test_schedule_expressions_follow_eventbridge(expression: str, valid: bool) -> None:
    assert (schedule_problem(expression) is None) is valid
