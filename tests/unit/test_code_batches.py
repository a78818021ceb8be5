"""Code batches on the embedded tables: what a batch hands out is exactly what is stored,
however the writes fail; the sharded listing is newest first with an opaque cursor; a disable
that meets a transaction in flight is retried.

Faults are the embedded AWS's own (throttling, lost answers, TransactionConflict). A partial
batch (a BatchWriteItem that writes some items and hands the others back as UnprocessedItems,
as DynamoDB does under load) is played at the client's edge, since the embedded AWS always
writes a whole batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from billing.codes import admin as code_admin
from billing.codes import listing, redemption
from billing.errors import InvalidRequest, NotFound
from billing.models import AuditRecord, RedemptionCode
from billing.pagination import encode_cursor
from billing.referral import signup

from local.aws import EmbeddedAws, Fault
from tests.support.embedded_tables import ROOT, embedded_tables
from tests.support.stack import wait_for


@pytest.fixture(scope="module")
def aws() -> Iterator[EmbeddedAws]:
    with embedded_tables() as started, pytest.MonkeyPatch.context() as patch:
        secrets = started.client("secretsmanager").list_secrets()["SecretList"]
        code_hash = next(s for s in secrets if "redemption codes" in s.get("Description", ""))
        patch.setenv("CODE_HASH_SECRET_ARN", code_hash["ARN"])
        patch.setenv("SETTINGS_FILE", str(ROOT / "settings" / "local.json"))
        yield started


@pytest.fixture(autouse=True)
def no_faults(aws: EmbeddedAws) -> Iterator[None]:
    aws.registry.clear()
    yield
    aws.registry.clear()


def fault(aws: EmbeddedAws, operation: str, error: str, **spec: Any) -> None:
    spec.setdefault("contains", RedemptionCode.Meta.table_name)
    aws.registry.add(
        Fault.from_json(
            {"service": "dynamodb", "operation": operation, "error_code": error, **spec}
        )
    )


def stored_ids(batch_id: str) -> set[str]:
    return {c.code_id for c in RedemptionCode.scan(consistent_read=True) if c.batch_id == batch_id}


def handed_out_ids(codes: list[str]) -> set[str]:
    from billing.codes import plaintext

    return {plaintext.code_id(code) for code in codes}


def audits(batch_id: str) -> dict[str, dict[str, Any]]:
    return {
        r.action: r.detail.as_dict()
        for r in AuditRecord.scan(consistent_read=True)
        if r.target == batch_id
    }


def calls(aws: EmbeddedAws, operation: str) -> int:
    return int(aws.registry.stats()["calls"].get(f"dynamodb.{operation}", 0))


def redeem_all(codes: list[str]) -> None:
    user = f"u-{uuid.uuid4().hex[:12]}"
    signup.create_account(user, None)
    for n, code in enumerate(codes):
        assert redemption.redeem(user, code, f"10.9.{n // 250}.{n % 250}").quota_added == 7


class PartialBatches:
    """DynamoDB under load: each BatchWriteItem writes only every other item and hands the
    rest back as UnprocessedItems, for the first `rounds` calls."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.handed_back = 0
        self.client = RedemptionCode._get_connection().connection.client

    def __enter__(self) -> PartialBatches:
        events = self.client.meta.events
        events.register("before-parameter-build.dynamodb.BatchWriteItem", self.keep_half)
        events.register("after-call.dynamodb.BatchWriteItem", self.hand_back)
        return self

    def __exit__(self, *exc: object) -> None:
        events = self.client.meta.events
        events.unregister("before-parameter-build.dynamodb.BatchWriteItem", self.keep_half)
        events.unregister("after-call.dynamodb.BatchWriteItem", self.hand_back)

    def keep_half(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if self.rounds <= 0:
            return
        self.rounds -= 1
        for table, items in params["RequestItems"].items():
            context.setdefault("unprocessed", {})[table] = items[1::2]
            params["RequestItems"][table] = items[0::2]

    def hand_back(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        unprocessed = context.get("unprocessed")
        if unprocessed:
            parsed["UnprocessedItems"] = unprocessed
            self.handed_back += sum(len(items) for items in unprocessed.values())


# ---------------------------------------------------------------- creating a batch


def test_partial_batches_are_sent_again_until_every_code_is_stored(aws: EmbeddedAws) -> None:
    before = calls(aws, "BatchWriteItem")
    with PartialBatches(rounds=40) as partial:
        batch = code_admin.create_batch("admin-1", "partial", 7, 300, time_budget=120)
    assert partial.handed_back > 150  # most items came back at least once
    assert calls(aws, "BatchWriteItem") - before > 300 // 25  # and were sent again
    assert len(batch.codes) == 300
    assert handed_out_ids(batch.codes) == stored_ids(batch.batch_id)
    redeem_all(batch.codes[::10])


def test_a_write_whose_answer_was_lost_is_sent_again_and_kept(aws: EmbeddedAws) -> None:
    # One chunk's every attempt (botocore's four) is applied, then answered with throttling.
    fault(
        aws,
        "BatchWriteItem",
        "ProvisionedThroughputExceededException",
        after=1,
        count=4,
        after_commit=True,
    )
    fault(aws, "BatchWriteItem", "ProvisionedThroughputExceededException", after=3, count=5)
    batch = code_admin.create_batch("admin-1", "lost answers", 7, 100, time_budget=120)
    assert len(batch.codes) == 100
    assert handed_out_ids(batch.codes) == stored_ids(batch.batch_id)
    assert "redemption_codes.create_incomplete" not in audits(batch.batch_id)
    redeem_all(batch.codes)


def test_when_writes_keep_failing_only_the_stored_codes_are_handed_out(aws: EmbeddedAws) -> None:
    # Every write is applied but answered with an error: the first chunk is retried until the
    # time is up, the others never sent; the look-up finds the first chunk stored.
    fault(
        aws, "BatchWriteItem", "ProvisionedThroughputExceededException", count=-1, after_commit=True
    )
    batch = code_admin.create_batch("admin-1", "stuck", 7, 100, time_budget=0.5)
    assert len(batch.codes) == 25 and batch.requested == 100
    assert handed_out_ids(batch.codes) == stored_ids(batch.batch_id)
    shortfall = audits(batch.batch_id)["redemption_codes.create_incomplete"]
    assert (shortfall["requested"], shortfall["stored"], shortfall["unconfirmed_code_ids"]) == (
        100,
        25,
        [],
    )


def test_codes_whose_fate_is_unknown_are_named_for_an_admin_not_handed_out(
    aws: EmbeddedAws,
) -> None:
    fault(
        aws, "BatchWriteItem", "ProvisionedThroughputExceededException", count=-1, after_commit=True
    )
    fault(aws, "BatchGetItem", "InternalServerError", count=-1)
    with pytest.raises(code_admin.TryAgain):
        code_admin.create_batch("admin-1", "unknown", 7, 30, time_budget=0.3)
    aws.registry.clear()
    [batch_id] = {
        r.target
        for r in AuditRecord.scan(consistent_read=True)
        if r.action == "redemption_codes.create_incomplete"
        and r.detail.as_dict()["unconfirmed_code_ids"]
    }
    unconfirmed = audits(batch_id)["redemption_codes.create_incomplete"]["unconfirmed_code_ids"]
    assert len(unconfirmed) == 25  # the one chunk sent: stored, but its answer never came
    assert set(unconfirmed) == stored_ids(batch_id)


def test_nothing_stored_is_try_again_and_writes_no_code(aws: EmbeddedAws) -> None:
    fault(aws, "BatchWriteItem", "ProvisionedThroughputExceededException", count=-1)
    with pytest.raises(code_admin.TryAgain) as refused:
        code_admin.create_batch("admin-1", "refused", 7, 50, time_budget=0.5)
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
    aws.registry.clear()
    [batch_id] = {
        r.target
        for r in AuditRecord.scan(consistent_read=True)
        if r.action == "redemption_codes.create" and r.detail.as_dict()["name"] == "refused"
    }
    assert stored_ids(batch_id) == set()


# ---------------------------------------------------------------- listing


def test_the_listing_merges_the_shards_newest_first(aws: EmbeddedAws) -> None:
    batches = [code_admin.create_batch("admin-1", f"list-{n}", 1, 7) for n in range(3)]
    mine = {b.batch_id for b in batches}

    def caught_up() -> bool:
        # The index lags behind its table (in AWS as on the strict stack): these codes are
        # the newest, so the first page shows them all once it has caught up.
        return sum(c.batch_id in mine for c in listing.newest_first(21, None)[0]) == 21

    wait_for(caught_up, timeout=10, message="the listing index to show the new codes")
    seen: list[RedemptionCode] = []
    cursor: str | None = None
    while True:
        codes, cursor = listing.newest_first(4, cursor)
        assert len(codes) <= 4
        seen += codes
        if cursor is None:
            break
    keys = [c.list_sort for c in seen]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)
    ours = [c for c in seen if c.batch_id in mine]
    assert len(ours) == 21
    assert [c.batch_id for c in ours[:7]] == [batches[2].batch_id] * 7  # newest batch first
    assert len({c.list_shard for c in ours}) > 1  # spread over the shards
    assert {c.list_shard for c in seen} <= {f"codes#{n}" for n in range(listing.SHARDS)}


@pytest.mark.parametrize(
    "cursor",
    [
        "not-base64!",
        encode_cursor({"user_id": {"S": "someone"}}),
        encode_cursor({"before": "yesterday"}),
        encode_cursor({"before": "2030-01-01T00:00:00.000000Z#" + "0" * 64, "more": 1}),
    ],
)
def test_a_cursor_this_listing_did_not_issue_is_refused(aws: EmbeddedAws, cursor: str) -> None:
    with pytest.raises(InvalidRequest):
        listing.newest_first(5, cursor)


# ---------------------------------------------------------------- disabling


def test_a_disable_that_meets_a_transaction_is_retried(aws: EmbeddedAws) -> None:
    batch = code_admin.create_batch("admin-1", "conflict", 7, 1)
    [code_id] = handed_out_ids(batch.codes)
    fault(aws, "UpdateItem", "TransactionConflictException", count=3, contains=code_id)
    assert code_admin.disable("admin-1", code_id)["status"] == "disabled"
    assert RedemptionCode.get(code_id, consistent_read=True).status == "disabled"


def test_a_disable_that_keeps_conflicting_is_try_again_and_changes_nothing(
    aws: EmbeddedAws,
) -> None:
    batch = code_admin.create_batch("admin-1", "conflict", 7, 1)
    [code_id] = handed_out_ids(batch.codes)
    fault(aws, "UpdateItem", "TransactionConflictException", count=-1, contains=code_id)
    with pytest.raises(code_admin.TryAgain):
        code_admin.disable("admin-1", code_id)
    aws.registry.clear()
    assert RedemptionCode.get(code_id, consistent_read=True).status == "active"
    with pytest.raises(NotFound):
        code_admin.disable("admin-1", "f" * 64)
