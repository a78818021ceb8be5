"""Helpers of the metering tests on a local stack: funded users, usage events, the Invoke API,
the usage queue and its DLQ, and reads of what was written (through the HTTP API, and the
tables where a test must prove that nothing was written).

Prices (settings/local.json): gpt-4o has model ratio 1.25 and completion ratio 4, so
`prompt_tokens=80, completion_tokens=0` costs 100 quota.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.stack import ROOT, LocalStack, wait_for

EVENTS = ROOT / "events"
FUNCTION = "MeterUsageFunction"
ADMIN = "admin-metering"


def sample(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


def new_user() -> str:
    return f"meter-{uuid.uuid4().hex[:12]}"


def new_request() -> str:
    return f"req-{uuid.uuid4().hex}"


def create_account(stack: LocalStack, user: str) -> None:
    created = stack.request("POST", "/account", token=stack.token(user), json={})
    assert created.status_code == 201, created.text


def funded_user(stack: LocalStack, quota: int) -> str:
    """A user with an account holding `quota`, credited through the admin route."""
    user = new_user()
    create_account(stack, user)
    if quota:
        adjusted = stack.request(
            "POST",
            f"/admin/accounts/{user}/adjust",
            token=stack.token(ADMIN, admin=True),
            json={"delta": quota, "reason": "metering test"},
        )
        assert adjusted.status_code == 200, adjusted.text
        assert adjusted.json()["quota"] == quota
    return user


def usage_event(
    user: str,
    action: str = "charge",
    request_id: str | None = None,
    prompt_tokens: int = 80,
    completion_tokens: int = 0,
    model: str = "gpt-4o",
    **fields: Any,
) -> dict[str, Any]:
    event = sample("meter_usage_charge.json")
    event.pop("group")
    event.update(
        action=action,
        request_id=request_id or new_request(),
        user_id=user,
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        **fields,
    )
    return event


def invoke(stack: LocalStack, payload: Any) -> Any:
    return stack.invoke(FUNCTION, payload)


def get_account(stack: LocalStack, user: str) -> dict[str, Any]:
    response = stack.request("GET", "/account", token=stack.token(user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for_indexes(stack: LocalStack) -> None:
    """Let the GSIs catch up with every write made so far (they lag behind the table, as in
    AWS, and can never be read consistently): before a list read through one (GET /usage,
    GET /admin/unbilled-usage) that must show those writes, or must show that none happened."""
    time.sleep(stack.index_lag + 0.05)


def all_pages(
    stack: LocalStack, user: str, path: str, *, admin: bool = False
) -> list[dict[str, Any]]:
    token = stack.token(user, admin=admin)
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = f"?limit=100&cursor={cursor}" if cursor else "?limit=100"
        page = stack.request("GET", path + query, token=token)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if not cursor:
            return items


def assert_ledger_sums(stack: LocalStack, user: str) -> dict[str, Any]:
    """The quota ledger sums to the balance; returns the account."""
    account = get_account(stack, user)
    entries = all_pages(stack, user, "/ledger")
    assert sum(e["delta"] for e in entries if e["balance"] == "quota") == account["quota"]
    return account


def _plain_item(item: dict[str, Any]) -> dict[str, Any]:
    return {key: next(iter(value.values())) for key, value in item.items()}


def account_item(stack: LocalStack, user: str) -> dict[str, Any]:
    item = (
        stack.boto3_client("dynamodb")
        .get_item(
            TableName=stack.table_name("AccountsTable"),
            Key={"user_id": {"S": user}},
            ConsistentRead=True,
        )
        .get("Item")
    )
    assert item is not None
    return _plain_item(item)


def table_item(stack: LocalStack, table: str, request_id: str) -> dict[str, Any] | None:
    found = stack.boto3_client("dynamodb").get_item(
        TableName=stack.table_name(table),
        Key={"request_id": {"S": request_id}},
        ConsistentRead=True,
    )
    item = found.get("Item")
    return None if item is None else _plain_item(item)


def usage_record(stack: LocalStack, request_id: str) -> dict[str, Any] | None:
    return table_item(stack, "UsageTable", request_id)


def unbilled_item(stack: LocalStack, request_id: str) -> dict[str, Any] | None:
    return table_item(stack, "UnbilledUsageTable", request_id)


def statuses(results: list[dict[str, Any]]) -> list[str]:
    return [r["status"] for r in results]


# ---------------------------------------------------------------- delivery orders

HOLD_ACTIONS = ("reserve", "settle", "release")


def delivery_orders() -> list[tuple[str, ...]]:
    """Every order of up to three hold actions, and of all three with one of them repeated."""
    found = [seq for n in (1, 2, 3) for seq in itertools.product(HOLD_ACTIONS, repeat=n)]
    found += sorted(
        {
            seq
            for repeated in HOLD_ACTIONS
            for seq in itertools.permutations((*HOLD_ACTIONS, repeated))
        }
    )
    return found


def expected_statuses(order: Sequence[str]) -> list[str]:
    """What each delivery of one request_id answers (API.md, any delivery order holds): the
    first settle bills; the first reserve holds unless the request is closed already, the
    first release closes it unless it was settled; anything else is a duplicate."""
    state: str | None = None
    seen: set[str] = set()
    statuses: list[str] = []
    for action in order:
        closed = state is not None if action == "reserve" else state == "settled"
        if action in seen or (action != "settle" and closed):
            statuses.append("duplicate")
        else:
            state = {"reserve": "reserved", "settle": "settled", "release": "released"}[action]
            statuses.append(state)
        seen.add(action)
    return statuses


def final_status(order: Sequence[str]) -> str:
    """What the request_id ends as: it depends on which actions arrived, not on their order."""
    if "settle" in order:
        return "settled"
    return "released" if "release" in order else "reserved"


# ---------------------------------------------------------------- the usage queue and its DLQ


def send(stack: LocalStack, bodies: list[Any]) -> None:
    """Each body (a payload, or text sent as is) as one message on the usage queue."""
    sqs = stack.boto3_client("sqs")
    for body in bodies:
        text = body if isinstance(body, str) else json.dumps(body)
        sqs.send_message(QueueUrl=stack.queue_url("UsageQueue"), MessageBody=text)


def queue_depth(stack: LocalStack, logical_id: str) -> int:
    attributes = stack.boto3_client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_url(logical_id),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def take_dead_letters(stack: LocalStack, marker: str) -> list[dict[str, Any]]:
    """Receive the usage DLQ's messages whose body contains `marker` (a test's own user or
    request id), delete them, and return them as {"body", "reason", "source"}; the others are
    left for their tests (made visible again at once)."""
    sqs = stack.boto3_client("sqs")
    url = stack.queue_url("UsageDLQ")
    mine: list[dict[str, Any]] = []
    others: list[str] = []
    while True:
        received = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=0
        ).get("Messages", [])
        if not received:
            break
        for message in received:
            if marker not in message["Body"]:
                others.append(message["ReceiptHandle"])
                continue
            attributes = message.get("MessageAttributes", {})
            mine.append(
                {
                    "body": message["Body"],
                    "reason": attributes.get("reason", {}).get("StringValue"),
                    "source": attributes.get("source_message_id", {}).get("StringValue"),
                }
            )
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    for handle in others:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0)
    return mine


def collect_dead_letters(
    stack: LocalStack, marker: str, count: int, timeout: float = 30
) -> list[dict[str, Any]]:
    """Wait until `count` dead letters with `marker` were taken (no more are expected), one per
    source message: a standard queue delivers at least once, so a message received again
    before its first delivery was done (a slow worker past the visibility timeout) is
    dead-lettered again, under the same source message id, as in AWS."""
    by_source: dict[str, dict[str, Any]] = {}

    def enough() -> bool:
        for letter in take_dead_letters(stack, marker):
            by_source.setdefault(str(letter["source"]), letter)
        return len(by_source) >= count

    wait_for(enough, timeout=timeout, message=f"{count} dead letters of {marker}")
    taken = list(by_source.values())
    assert len(taken) == count, taken
    return taken


# ---------------------------------------------------------------- a template variant


def _resource_block(text: str, logical_id: str) -> tuple[int, int]:
    start = text.index(f"\n  {logical_id}:\n")
    following = re.compile(r"\n  \w+:\n").search(text, start + 1)
    return start, following.start() if following else len(text)


def template_without_schedules(directory: Path, *logical_ids: str) -> Path:
    """infra/template.yaml with the Schedule events of `logical_ids` left out (code paths
    made absolute): for a stack whose clock moves day by day over tables too large to
    reconcile every simulated hour."""
    text = (ROOT / "infra" / "template.yaml").read_text()
    for logical_id in logical_ids:
        start, end = _resource_block(text, logical_id)
        kept: list[str] = []
        dropped: list[str] = []
        skipping = False
        for line in text[start:end].split("\n"):
            if line == "      Events:":
                skipping = True
            elif skipping and line.strip() and not line.startswith(" " * 7):
                skipping = False
            (dropped if skipping else kept).append(line)
        assert any("Type: Schedule" in line for line in dropped), f"{logical_id}: no schedule"
        text = text[:start] + "\n".join(kept) + text[end:]
    text = re.sub(r"(CodeUri|ContentUri): \.\./", rf"\1: {ROOT}/", text)
    path = directory / f"template-without-schedules-{'-'.join(logical_ids)}.yaml"
    path.write_text(text)
    return path


def template_with_meter_timeout(
    directory: Path,
    seconds: int,
    max_receive_count: int | None = None,
    visibility_timeout: int | None = None,
    max_queue_events: int | None = None,
) -> Path:
    """infra/template.yaml with MeterUsageFunction's Timeout set to `seconds` and, if given,
    the usage queue's maxReceiveCount and VisibilityTimeout (which must stay >= `seconds`;
    handed-back messages come back after it) and the function's MAX_QUEUE_EVENTS (code paths
    made absolute, so the copy runs from anywhere)."""
    text = (ROOT / "infra" / "template.yaml").read_text()
    start, end = _resource_block(text, "MeterUsageFunction")
    block, count = re.subn(
        r"\n      Timeout: \d+\n", f"\n      Timeout: {seconds}\n", text[start:end]
    )
    assert count == 1, "MeterUsageFunction has no Timeout of its own"
    if max_queue_events is not None:
        block, count = re.subn(
            r"\n( +)USAGE_QUEUE_URL: !Ref UsageQueue\n",
            rf'\n\1USAGE_QUEUE_URL: !Ref UsageQueue\n\1MAX_QUEUE_EVENTS: "{max_queue_events}"\n',
            block,
        )
        assert count == 1, "MeterUsageFunction has no USAGE_QUEUE_URL"
    text = text[:start] + block + text[end:]
    if max_receive_count is not None:
        start, end = _resource_block(text, "UsageQueue")
        block, count = re.subn(
            r"maxReceiveCount: \d+", f"maxReceiveCount: {max_receive_count}", text[start:end]
        )
        assert count == 1, "UsageQueue has no redrive policy"
        text = text[:start] + block + text[end:]
    if visibility_timeout is not None:
        start, end = _resource_block(text, "UsageQueue")
        block, count = re.subn(
            r"VisibilityTimeout: \d+", f"VisibilityTimeout: {visibility_timeout}", text[start:end]
        )
        assert count == 1, "UsageQueue has no VisibilityTimeout"
        text = text[:start] + block + text[end:]
    text = re.sub(r"(CodeUri|ContentUri): \.\./", rf"\1: {ROOT}/", text)
    suffix = "" if max_receive_count is None else f"-receives-{max_receive_count}"
    suffix += "" if visibility_timeout is None else f"-visibility-{visibility_timeout}"
    suffix += "" if max_queue_events is None else f"-events-{max_queue_events}"
    path = directory / f"template-meter-timeout-{seconds}{suffix}.yaml"
    path.write_text(text)
    return path
