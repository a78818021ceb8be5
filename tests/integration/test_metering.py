"""Usage metering end to end: the Lambda Invoke API and the usage queue of the local stack.

Accounts get quota through the public admin route; results come from
`boto3.client("lambda").invoke(FunctionName="MeterUsageFunction")`; balances, the ledger and
the usage log are read back through the HTTP API (and the tables, to prove that nothing was
written for a refused event).

Prices (settings/local.json): gpt-4o has model ratio 1.25 and completion ratio 4, so
`prompt_tokens=80, completion_tokens=0` costs 100 quota.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.metering import (
    FUNCTION,
    ROOT,
    account_item,
    all_pages,
    assert_ledger_sums,
    collect_dead_letters,
    funded_user,
    get_account,
    invoke,
    new_request,
    new_user,
    queue_depth,
    sample,
    send,
    statuses,
    unbilled_item,
    usage_event,
    usage_record,
    wait_for_indexes,
)
from tests.support.stack import LambdaFunctionError, LocalStack, wait_for

# ---------------------------------------------------------------- single events


def test_the_sample_charge_event_is_priced_and_logged(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000)
    event = {**sample("meter_usage_charge.json"), "user_id": user, "request_id": new_request()}
    result = invoke(stack, event)
    # (1200 + 300 * 4) * 1.25 * 1 = 3000
    assert result == {
        "request_id": event["request_id"],
        "status": "charged",
        "quota": 3000,
        "balance": 7000,
    }
    account = assert_ledger_sums(stack, user)
    assert (account["quota"], account["used_quota"], account["request_count"]) == (7000, 3000, 1)
    entries = all_pages(stack, user, "/ledger")
    usage = [e for e in entries if e["kind"] == "usage"]
    assert [(e["id"], e["delta"], e["balance_after"]) for e in usage] == [
        (f"usage#{event['request_id']}", -3000, 7000)
    ]
    record = usage_record(stack, event["request_id"])
    assert record is not None
    assert (record["user_id"], record["model"], record["group"], record["status"]) == (
        user, "gpt-4o", "default", "charged",
    )  # fmt: skip
    assert (record["model_ratio"], record["completion_ratio"], record["group_ratio"]) == (
        "1.25", "4", "1",
    )  # fmt: skip
    assert (record["prompt_tokens"], record["completion_tokens"], record["quota"]) == (
        "1200", "300", "3000",
    )  # fmt: skip


def test_100_concurrent_charges_against_a_balance_for_60(stack: LocalStack) -> None:
    user = funded_user(stack, 6000)
    events = [usage_event(user) for _ in range(100)]  # 100 quota each
    lowest: list[int] = []
    done = threading.Event()

    def watch_balance() -> None:
        # The balance as stored, read while the charges race: it never goes below zero.
        while not done.is_set():
            lowest.append(int(account_item(stack, user)["quota"]))

    watcher = threading.Thread(target=watch_balance)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=100) as pool:
            results = list(pool.map(lambda e: invoke(stack, e), events))
    finally:
        done.set()
        watcher.join()

    charged = [r for r in results if r["status"] == "charged"]
    refused = [r for r in results if r["status"] == "rejected"]
    assert len(charged) == 60 and len(refused) == 40
    assert all(r["error"] == "insufficient_quota" for r in refused)
    # Each charge saw the balance exactly: 5900, 5800, ..., 0, each once.
    assert sorted(r["balance"] for r in charged) == list(range(0, 6000, 100))
    assert min(lowest) >= 0
    account = assert_ledger_sums(stack, user)
    assert account["quota"] == 0 and account["held_quota"] == 0
    assert account["used_quota"] == 6000 and account["request_count"] == 60
    # A refused charge left no usage record.
    for r in refused:
        assert usage_record(stack, r["request_id"]) is None


def test_the_same_request_id_five_times_charges_once(stack: LocalStack) -> None:
    user = funded_user(stack, 1000)
    event = usage_event(user)
    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(lambda _: invoke(stack, event), range(5)))
    assert sorted(statuses(results)) == ["charged"] + ["duplicate"] * 4
    assert {(r["quota"], r["balance"]) for r in results} == {(100, 900)}
    assert all(r["first_status"] == "charged" for r in results if r["status"] == "duplicate")
    # Inside one batch as well.
    repeated = usage_event(user)
    batch = invoke(stack, {"events": [repeated] * 5})["results"]
    assert statuses(batch) == ["charged"] + ["duplicate"] * 4
    assert {r["balance"] for r in batch} == {800}
    account = assert_ledger_sums(stack, user)
    assert account["quota"] == 800 and account["request_count"] == 2
    assert account["used_quota"] == 200


def test_a_repeat_the_balance_cannot_pay_again_is_a_duplicate(stack: LocalStack) -> None:
    user = funded_user(stack, 1000)
    event = usage_event(user, prompt_tokens=560)  # 700 of 1000
    first = invoke(stack, event)
    assert first["status"] == "charged" and first["balance"] == 300
    again = invoke(stack, event)
    assert again["status"] == "duplicate"
    assert (again["quota"], again["balance"]) == (700, 300)
    in_batch = invoke(stack, {"events": [event, usage_event(user)]})["results"]
    assert statuses(in_batch) == ["duplicate", "charged"]
    account = assert_ledger_sums(stack, user)
    assert account["quota"] == 200 and account["request_count"] == 2


# ---------------------------------------------------------------- holds


def test_reserve_then_settle_higher_goes_negative_by_the_excess_only(stack: LocalStack) -> None:
    user = funded_user(stack, 1000)
    request_id = new_request()
    reserved = invoke(stack, usage_event(user, "reserve", request_id, prompt_tokens=800))
    assert reserved["status"] == "reserved" and reserved["quota"] == 1000
    assert reserved["balance"] == 1000 and "expires_at" in reserved
    account = get_account(stack, user)
    assert account["quota"] == 1000 and account["held_quota"] == 1000
    # The hold takes the whole available balance: another charge is refused meanwhile.
    refused = invoke(stack, usage_event(user, prompt_tokens=8))
    assert refused["status"] == "rejected" and refused["error"] == "insufficient_quota"

    settled = invoke(stack, usage_event(user, "settle", request_id, prompt_tokens=960))
    # Actual 1200 against a hold of 1000: the balance goes below zero by the excess, 200.
    assert settled == {"request_id": request_id, "status": "settled", "quota": 1200,
                       "balance": -200}  # fmt: skip
    account = assert_ledger_sums(stack, user)
    assert account["quota"] == -200 and account["held_quota"] == 0
    assert account["used_quota"] == 1200 and account["request_count"] == 1
    again = invoke(stack, usage_event(user, "settle", request_id, prompt_tokens=5000))
    assert again["status"] == "duplicate" and again["quota"] == 1200
    assert get_account(stack, user)["quota"] == -200
    record = usage_record(stack, request_id)
    assert record is not None and record["status"] == "settled"
    assert "hold_shard" not in record and "hold_expires_at" not in record


def test_reserve_then_release_is_back_to_the_start(stack: LocalStack) -> None:
    user = funded_user(stack, 1000)
    start = get_account(stack, user)
    ledger_before = all_pages(stack, user, "/ledger")
    request_id = new_request()
    invoke(stack, usage_event(user, "reserve", request_id, prompt_tokens=400))
    assert get_account(stack, user)["held_quota"] == 500
    released = invoke(stack, usage_event(user, "release", request_id))
    assert released == {"request_id": request_id, "status": "released", "quota": 500,
                        "balance": 1000}  # fmt: skip
    assert get_account(stack, user) == start
    assert all_pages(stack, user, "/ledger") == ledger_before
    assert invoke(stack, usage_event(user, "release", request_id))["status"] == "duplicate"
    # A settle after the release still bills the usage (any delivery order holds), in full:
    # the hold is gone.
    late = invoke(stack, usage_event(user, "settle", request_id))
    assert (late["status"], late["quota"], late["balance"]) == ("settled", 100, 900)
    account = assert_ledger_sums(stack, user)
    assert (account["quota"], account["held_quota"], account["request_count"]) == (900, 0, 1)


def test_the_sample_batch_event(stack: LocalStack) -> None:
    user = funded_user(stack, 100_000)
    payload = sample("meter_usage_batch.json")
    for event in payload["events"]:
        event["user_id"] = user
        event["request_id"] = f"{event['request_id']}-{user}"
    results = invoke(stack, payload)["results"]
    assert statuses(results) == ["charged", "reserved", "settled", "charged"]
    # (800 + 200*4) * 0.075 = 120; hold (1000 + 4000*4) * 1.25 = 21250;
    # settled (1000 + 1500*4) * 1.25 = 8750; dall-e-3 for vip 0.04 * 500000 * 0.8 = 16000
    assert [r["quota"] for r in results] == [120, 21250, 8750, 16000]
    assert [r["balance"] for r in results] == [99_880, 99_880, 91_130, 75_130]
    account = assert_ledger_sums(stack, user)
    assert account["quota"] == 75_130 and account["held_quota"] == 0
    assert account["used_quota"] == 24_870 and account["request_count"] == 3


def test_a_batch_of_100_for_one_user_takes_two_account_writes(stack: LocalStack) -> None:
    user = funded_user(stack, 100_000)
    version = int(account_item(stack, user)["version"])
    events = [usage_event(user) for _ in range(100)]
    results = invoke(stack, {"events": events})["results"]
    assert [r["request_id"] for r in results] == [e["request_id"] for e in events]
    assert [r["balance"] for r in results] == [100_000 - 100 * (i + 1) for i in range(100)]
    assert int(account_item(stack, user)["version"]) - version == 2
    account = assert_ledger_sums(stack, user)
    assert account["request_count"] == 100 and account["used_quota"] == 10_000


# ---------------------------------------------------------------- bad input


BAD_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("negative prompt tokens", {"prompt_tokens": -1}),
    ("negative completion tokens", {"completion_tokens": -5}),
    ("tokens as a string", {"prompt_tokens": "80"}),
    ("tokens as a float", {"prompt_tokens": 80.0}),
    ("tokens as a bool", {"completion_tokens": True}),
    ("unknown action", {"action": "refund"}),
    ("empty request id", {"request_id": ""}),
    ("user id too long", {"user_id": "u" * 129}),
    ("unknown field", {"cost": 1}),
    ("unknown group", {"group": "platinum"}),
    ("empty group", {"group": ""}),
]
MISSING = ["action", "request_id", "user_id", "model", "prompt_tokens", "completion_tokens"]


def _assert_nothing_written(
    stack: LocalStack, user: str, before: dict[str, Any], request_ids: list[str]
) -> None:
    assert get_account(stack, user) == before
    assert [e["kind"] for e in all_pages(stack, user, "/ledger")] == ["adjustment"]
    wait_for_indexes(stack)
    assert all_pages(stack, user, "/usage") == []
    for request_id in request_ids:
        if request_id:
            assert usage_record(stack, request_id) is None


@pytest.mark.parametrize(("case", "change"), BAD_EVENTS, ids=[c for c, _ in BAD_EVENTS])
def test_a_bad_event_is_refused_and_writes_nothing(
    stack: LocalStack, case: str, change: dict[str, Any]
) -> None:
    user = funded_user(stack, 1000)
    before = get_account(stack, user)
    event = {**usage_event(user), **change}
    result = invoke(stack, event)
    assert result["status"] == "rejected" and result["error"] == "invalid_event", result
    assert result["message"]
    _assert_nothing_written(stack, user, before, [event["request_id"]])


@pytest.mark.parametrize("missing", MISSING)
def test_an_event_missing_a_field_is_refused(stack: LocalStack, missing: str) -> None:
    user = funded_user(stack, 1000)
    before = get_account(stack, user)
    event = usage_event(user)
    del event[missing]
    result = invoke(stack, event)
    assert result["status"] == "rejected" and result["error"] == "invalid_event"
    assert missing in result["message"]
    _assert_nothing_written(stack, user, before, [event.get("request_id", "")])


def test_unknown_model_is_refused_never_free(stack: LocalStack) -> None:
    user = funded_user(stack, 1000)
    before = get_account(stack, user)
    event = usage_event(user, model="gpt-9-unpriced")
    result = invoke(stack, event)
    assert result["status"] == "rejected" and result["error"] == "unknown_model"
    _assert_nothing_written(stack, user, before, [event["request_id"]])
    # The usage happened: it is kept for an admin (tests/integration/test_metering_unbilled.py).
    assert result["unbilled"] is True
    kept = unbilled_item(stack, event["request_id"])
    assert kept is not None and (kept["status"], kept["error"]) == ("unbilled", "unknown_model")


def test_unknown_account_is_refused(stack: LocalStack) -> None:
    event = usage_event(new_user())
    result = invoke(stack, event)
    assert result["status"] == "rejected" and result["error"] == "account_not_found"
    assert usage_record(stack, event["request_id"]) is None
    assert result["unbilled"] is True
    assert unbilled_item(stack, event["request_id"]) is not None


def test_a_batch_refuses_bad_events_one_by_one_in_order(stack: LocalStack) -> None:
    user = funded_user(stack, 1000)
    good_first, good_last = usage_event(user), usage_event(user)
    bad_tokens = {**usage_event(user), "prompt_tokens": -1}
    bad_model = usage_event(user, model="gpt-9-unpriced")
    results = invoke(
        stack, {"events": [good_first, bad_tokens, "not an event", bad_model, good_last]}
    )["results"]
    assert statuses(results) == ["charged", "rejected", "rejected", "rejected", "charged"]
    assert [r.get("error") for r in results[1:4]] == [
        "invalid_event", "invalid_event", "unknown_model",
    ]  # fmt: skip
    assert results[1]["request_id"] == bad_tokens["request_id"]
    assert usage_record(stack, bad_tokens["request_id"]) is None
    assert usage_record(stack, bad_model["request_id"]) is None
    account = assert_ledger_sums(stack, user)
    assert account["quota"] == 800 and account["request_count"] == 2


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("events", id="501 events"),
        pytest.param({"events": "nope"}, id="events not a list"),
        pytest.param({"events": [], "dry_run": True}, id="unknown batch field"),
    ],
)
def test_a_bad_batch_is_refused_whole_and_writes_nothing(stack: LocalStack, payload: Any) -> None:
    user = funded_user(stack, 100_000)
    before = get_account(stack, user)
    events = [usage_event(user) for _ in range(501)]
    body = {"events": events} if payload == "events" else payload
    result = invoke(stack, body)
    assert set(result) == {"error"} and result["error"]["code"] == "invalid_event"
    assert result["error"]["message"]
    if payload == "events":
        assert "500" in result["error"]["message"]
    _assert_nothing_written(stack, user, before, [e["request_id"] for e in events[:3]])


# ---------------------------------------------------------------- the usage queue


def test_usage_queue_messages_are_charged_once(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000)
    single = usage_event(user)
    batch = [usage_event(user) for _ in range(3)]
    invalid = usage_event(user, prompt_tokens=-3)
    send(
        stack,
        [
            single,
            {"events": batch},
            single,  # the same event delivered twice
            f"this is not json ({user})",
            invalid,
            {"events": [usage_event(user) for _ in range(501)]},  # too many: refused whole
        ],
    )
    wait_for(
        lambda: (
            get_account(stack, user)["request_count"] == 4 and queue_depth(stack, "UsageQueue") == 0
        ),
        timeout=60,
        message="the usage queue to be metered and drained",
    )
    account = assert_ledger_sums(stack, user)
    assert account["quota"] == 10_000 - 400 and account["used_quota"] == 400
    for event in [single, *batch]:
        record = usage_record(stack, event["request_id"])
        assert record is not None and record["status"] == "charged"
    # What could not be metered is in the DLQ (its alarm fires), never deleted unseen.
    dead = collect_dead_letters(stack, user, 3)
    assert sorted(d["reason"] for d in dead) == ["invalid_event", "not_json", "over_limit"]
    by_reason = {d["reason"]: d["body"] for d in dead}
    assert by_reason["not_json"] == f"this is not json ({user})"
    assert json.loads(by_reason["invalid_event"]) == {"events": [invalid]}
    assert len(json.loads(by_reason["over_limit"])["events"]) == 501
    assert usage_record(stack, invalid["request_id"]) is None


def test_a_transient_failure_on_the_queue_is_retried_and_charges_once(
    stack: LocalStack,
) -> None:
    user = funded_user(stack, 10_000)
    event = usage_event(user)
    # The next two transactions for this user fail as DynamoDB would under throttling of
    # the account: the message fails, comes back, and is then charged once.
    stack.fault(
        service="dynamodb",
        operation="TransactWriteItems",
        error_code="ValidationException",
        contains=user,
        count=2,
    )
    try:
        send(stack, [event])
        wait_for(
            lambda: get_account(stack, user)["request_count"] == 1,
            timeout=60,
            message="the message to be retried and charged",
        )
    finally:
        stack.clear_faults()
    wait_for(lambda: queue_depth(stack, "UsageQueue") == 0, timeout=30, message="drained")
    account = assert_ledger_sums(stack, user)
    assert account["quota"] == 9900 and account["request_count"] == 1


def test_the_sample_sqs_event_through_the_invoke_api(stack: LocalStack) -> None:
    user = funded_user(stack, 100_000)
    payload = sample("meter_usage_sqs.json")
    request_ids = []
    for record in payload["Records"]:
        body = json.loads(record["body"])
        for event in body.get("events", [body]):
            event["user_id"] = user
            event["request_id"] = f"{event['request_id']}-{user}"
            request_ids.append(event["request_id"])
        record["body"] = json.dumps(body)
    assert invoke(stack, payload) == {"batchItemFailures": []}
    # (500 + 100*4) * 1.25 = 1125; (2000 + 500*4) * 0.075 = 300; (300 + 900*5) * 1.5 = 7200
    account = assert_ledger_sums(stack, user)
    assert account["used_quota"] == 1125 + 300 + 7200 and account["request_count"] == 3
    assert all(usage_record(stack, r) is not None for r in request_ids)
    # Redelivered as is: every event is a duplicate, nothing changes.
    assert invoke(stack, payload) == {"batchItemFailures": []}
    assert get_account(stack, user) == account


# ---------------------------------------------------------------- usage log


def test_get_usage_lists_the_users_records_newest_first(stack: LocalStack) -> None:
    user = funded_user(stack, 10_000)
    other = funded_user(stack, 10_000)
    request_ids = []
    for tokens in (8, 16, 24):
        event = usage_event(user, prompt_tokens=tokens)
        invoke(stack, event)
        request_ids.append(event["request_id"])
    invoke(stack, usage_event(other))
    reserve = usage_event(user, "reserve", prompt_tokens=40)
    invoke(stack, reserve)
    wait_for_indexes(stack)  # GET /usage reads by_user_shard, a GSI
    page = stack.request("GET", "/usage?limit=2", token=stack.token(user))
    assert page.status_code == 200
    items = page.json()["items"]
    assert [i["request_id"] for i in items] == [reserve["request_id"], request_ids[2]]
    everything = all_pages(stack, user, "/usage")
    assert [i["request_id"] for i in everything] == [reserve["request_id"], *request_ids[::-1]]
    assert [(i["status"], i["quota"], i["hold_quota"]) for i in everything] == [
        ("reserved", 0, 50), ("charged", 30, 0), ("charged", 20, 0), ("charged", 10, 0),
    ]  # fmt: skip
    assert everything[1]["model"] == "gpt-4o" and everything[1]["prompt_tokens"] == 24


# ---------------------------------------------------------------- the sweeper


@pytest.fixture(scope="module")
def short_holds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of its own whose holds live one second (settings override)."""
    document = json.loads((ROOT / "settings" / "local.json").read_text())
    document["limits"]["hold_ttl_seconds"] = 1
    path = tmp_path_factory.mktemp("settings") / "short-holds.json"
    path.write_text(json.dumps(document))
    local = LocalStack("metering-short-holds")
    local.start(settings=path)
    try:
        yield local
    finally:
        local.stop()


def test_an_unsettled_hold_is_released_by_the_sweeper(short_holds: LocalStack) -> None:
    stack = short_holds
    user = funded_user(stack, 1000)
    request_id = new_request()
    reserved = invoke(stack, usage_event(user, "reserve", request_id, prompt_tokens=400))
    assert reserved["status"] == "reserved"
    assert get_account(stack, user)["held_quota"] == 500

    def swept() -> bool:
        response = stack.run_schedule(FUNCTION, "ReleaseExpiredHolds")
        assert response.status_code == 200, response.text
        return get_account(stack, user)["held_quota"] == 0

    wait_for(swept, timeout=30, interval=0.5, message="the sweeper to release the hold")
    account = assert_ledger_sums(stack, user)
    assert account["quota"] == 1000 and account["used_quota"] == 0
    assert account["request_count"] == 0
    record = usage_record(stack, request_id)
    assert record is not None and record["status"] == "expired"
    assert "hold_shard" not in record
    # The client's own release is then a duplicate of the sweeper's, and changes nothing.
    late = invoke(stack, usage_event(user, "release", request_id))
    assert late["status"] == "duplicate" and late["first_status"] == "released"
    # Sweeping again finds nothing to release.
    again = stack.run_schedule(FUNCTION, "ReleaseExpiredHolds")
    assert again.status_code == 200
    assert get_account(stack, user)["held_quota"] == 0


def test_the_sample_schedule_event_runs_the_sweeper(short_holds: LocalStack) -> None:
    stack = short_holds
    user = funded_user(stack, 1000)
    request_id = new_request()
    invoke(stack, usage_event(user, "reserve", request_id, prompt_tokens=80))

    def released() -> bool:
        summary = invoke(stack, sample("meter_usage_schedule.json"))
        assert set(summary) == {"expired", "released"}
        return get_account(stack, user)["held_quota"] == 0

    wait_for(released, timeout=30, interval=0.5, message="the scheduled event to release")
    assert assert_ledger_sums(stack, user)["quota"] == 1000


def test_a_payload_that_is_not_an_event_is_refused_not_a_crash(stack: LocalStack) -> None:
    for payload in (["charge"], "charge", 42, None):
        try:
            result = invoke(stack, payload)
        except LambdaFunctionError as exc:
            raise AssertionError(f"{payload!r} crashed the function: {exc}") from exc
        assert result["status"] == "rejected" and result["error"] == "invalid_event"
