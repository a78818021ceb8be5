"""A user's usage over the shards of the usage index (issue 20, hot accounts): 300 charges
through the Invoke API land on several `by_user_shard` partitions, and GET /usage pages
through all of them newest first, with no duplicate and no gap, under signed cursors."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from typing import Any
from urllib.parse import quote

from tests.support.metering import funded_user, invoke, usage_event, wait_for_indexes
from tests.support.stack import ROOT, LocalStack

SHARDS = json.loads((ROOT / "settings" / "local.json").read_text())["usage"]["user_shards"]
CHARGES = 300
BATCHED = 280  # in batches of 70; the last 20 one by one


def _pages(stack: LocalStack, user: str, query: str, limit: int) -> list[list[dict[str, Any]]]:
    token = stack.token(user)
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        suffix = f"&cursor={quote(cursor)}" if cursor else ""
        response = stack.request("GET", f"/usage?limit={limit}{query}{suffix}", token=token)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(body["items"]) == limit  # only the last page is short


def _assert_newest_first(items: list[dict[str, Any]]) -> None:
    order = [(i["created_at"], i["request_id"]) for i in items]
    assert order == sorted(order, reverse=True)
    assert len(set(order)) == len(order)  # strictly: no record twice


def _user_shards(stack: LocalStack, request_ids: list[str]) -> set[str]:
    client = stack.boto3_client("dynamodb")
    table = stack.table_name("UsageTable")
    found: set[str] = set()
    for start in range(0, len(request_ids), 100):
        keys = [{"request_id": {"S": r}} for r in request_ids[start : start + 100]]
        read = client.batch_get_item(RequestItems={table: {"Keys": keys, "ConsistentRead": True}})
        assert not read["UnprocessedKeys"]
        found |= {item["user_shard"]["S"] for item in read["Responses"][table]}
    return found


def test_one_users_300_charges_page_across_shards_in_order(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000_000)
    other = funded_user(stack, 10_000_000)
    keyed: list[str] = []
    request_ids: list[str] = []
    # Batches (whose records share one created_at per ledger transaction) and single
    # events (each its own time), a third of them under an API key.
    events = [
        usage_event(user, **({"key_id": "k-shards"} if n % 3 == 0 else {})) for n in range(CHARGES)
    ]
    for start in range(0, BATCHED, 70):
        batch = events[start : start + 70]
        results = invoke(stack, {"events": batch})["results"]
        assert [r["status"] for r in results] == ["charged"] * len(batch)
    for event in events[BATCHED:]:
        assert invoke(stack, event)["status"] == "charged"
    for event in events:
        request_ids.append(event["request_id"])
        if event.get("key_id"):
            keyed.append(event["request_id"])
    assert invoke(stack, usage_event(other))["status"] == "charged"

    # The records are spread: more than one of the user's index partitions holds them.
    shards = _user_shards(stack, request_ids)
    assert len(shards) > 1
    assert shards <= {f"{user}#{n}" for n in range(SHARDS)}

    wait_for_indexes(stack)
    pages = _pages(stack, user, "", limit=23)
    listed = [item for page in pages for item in page]
    _assert_newest_first(listed)
    assert len(listed) == CHARGES
    assert {i["request_id"] for i in listed} == set(request_ids)  # no gap, not the other's
    assert len(pages) == -(-CHARGES // 23)
    # The singles were charged after the batches: they come first, newest first.
    assert [i["request_id"] for i in listed[: CHARGES - BATCHED]] == request_ids[BATCHED:][::-1]

    # A filter pages the same way, over its matches only.
    filtered = [i for p in _pages(stack, user, "&key_id=k-shards", limit=17) for i in p]
    _assert_newest_first(filtered)
    assert {i["request_id"] for i in filtered} == set(keyed) and len(filtered) == len(keyed)


def test_shard_cursors_stay_signed_for_their_caller_and_filters(stack: LocalStack) -> None:
    user = funded_user(stack, 1_000_000)
    other = funded_user(stack, 1_000_000)
    invoke(stack, {"events": [usage_event(user, key_id="k1") for _ in range(12)]})
    invoke(stack, usage_event(other))
    wait_for_indexes(stack)
    first = stack.request("GET", "/usage?limit=5", token=stack.token(user)).json()
    cursor = first["next_cursor"]
    assert isinstance(cursor, str) and "{" not in cursor and user not in cursor
    inner, _, mac = cursor.rpartition(".")
    forged_position = json.dumps({"at": "9999-12-31T00:00:00.000000Z", "id": "x"}).encode()
    forged = base64.urlsafe_b64encode(forged_position).decode().rstrip("=") + "." + mac
    refusals = {
        "forged position": forged,
        "another mac": f"{inner}.{'A' * len(mac)}",
        "truncated": cursor[:-2],
    }
    for what, value in refusals.items():
        response = stack.request("GET", f"/usage?cursor={quote(value)}", token=stack.token(user))
        assert response.status_code == 400, what
        assert response.json()["error"]["code"] == "invalid_request", what
    for token, query in (
        (stack.token(other), ""),  # another caller
        (stack.token(user), "&key_id=k1"),  # the same caller, other filters
    ):
        response = stack.request("GET", f"/usage?cursor={quote(cursor)}{query}", token=token)
        assert response.status_code == 400 and "items" not in response.json()
    second = stack.request(
        "GET", f"/usage?limit=5&cursor={quote(cursor)}", token=stack.token(user)
    ).json()
    both = first["items"] + second["items"]
    _assert_newest_first(both)
    assert len(both) == 10 and second["next_cursor"] is not None


def test_records_from_before_the_shards_are_listed_once_backfilled(stack: LocalStack) -> None:
    user = funded_user(stack, 1_000_000)
    assert invoke(stack, usage_event(user))["status"] == "charged"
    # A record as metering wrote it before the index was sharded: no user_shard (a release
    # that found no hold, so it moves no balance).
    legacy = f"req-legacy-{uuid.uuid4().hex}"
    client = stack.boto3_client("dynamodb")
    table = stack.table_name("UsageTable")
    client.put_item(
        TableName=table,
        Item={
            "request_id": {"S": legacy},
            "user_id": {"S": user},
            "model": {"S": "gpt-4o"},
            "status": {"S": "released"},
            "quota": {"N": "0"},
            "hold_quota": {"N": "0"},
            "prompt_tokens": {"N": "0"},
            "completion_tokens": {"N": "0"},
            "results": {"M": {}},
            "created_at": {"S": "2026-01-02T03:04:05.000006Z"},
        },
    )
    wait_for_indexes(stack)
    before = [i["request_id"] for p in _pages(stack, user, "", limit=5) for i in p]
    assert legacy not in before and len(before) == 1
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers' / 'common'}:{ROOT}"}
    command = [sys.executable, "-m", "tools.migrate_usage_shards", "--local", stack.base_url]
    for _ in range(2):  # idempotent: the second run finds nothing to set
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["set"] == 0
    shard = client.get_item(
        TableName=table, Key={"request_id": {"S": legacy}}, ConsistentRead=True
    )["Item"]["user_shard"]["S"]
    assert shard.rpartition("#")[0] == user
    wait_for_indexes(stack)
    after = [i["request_id"] for p in _pages(stack, user, "", limit=5) for i in p]
    assert after == [*before, legacy]  # the oldest, last
