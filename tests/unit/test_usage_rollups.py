"""The rollup fold (pure) and its write on the embedded tables: only the transition to
billed counts, a replayed batch changes nothing, a request counted in an earlier delivery is
skipped while the rest of its transaction is written."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from billing.date_range import DayRange
from billing.models import RollupMarker, UsageRollup
from billing.usage import rollups, summary
from billing.usage.summary import GroupBy

from local.aws import EmbeddedAws
from tests.support.embedded_tables import embedded_tables

_sequence = itertools.count(10**20)


def _attr(value: Any) -> dict[str, Any]:
    if isinstance(value, int):
        return {"N": str(value)}
    return {"S": str(value)}


def stream_record(
    new: dict[str, Any] | None, old: dict[str, Any] | None = None, *, event: str | None = None
) -> dict[str, Any]:
    change: dict[str, Any] = {"SequenceNumber": str(next(_sequence))}
    if new is not None:
        change["NewImage"] = {k: _attr(v) for k, v in new.items() if v is not None}
    if old is not None:
        change["OldImage"] = {k: _attr(v) for k, v in old.items() if v is not None}
    name = event or ("INSERT" if old is None else "MODIFY")
    return {"eventName": name, "dynamodb": change}


def usage(
    request_id: str,
    status: str,
    *,
    user: str = "u1",
    model: str = "m1",
    key: str | None = None,
    quota: int = 10,
    prompt: int = 3,
    completion: int = 4,
    at: str = "2026-11-02T10:00:00.000000Z",
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "user_id": user,
        "model": model,
        "key_id": key,
        "status": status,
        "quota": quota,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "created_at": at,
        "updated_at": at,
    }


# ---------------------------------------------------------------- the fold (pure)


@pytest.mark.parametrize(
    ("new", "old", "counts"),
    [
        ("charged", None, True),  # a charge is born billed
        ("settled", None, True),  # a settle without a hold before it
        ("settled", "reserved", True),  # a hold settled
        ("settled", "expired", True),  # a settle after the sweeper dropped the hold
        ("reserved", None, False),
        ("released", "reserved", False),
        ("expired", "reserved", False),
        ("settled", "settled", False),  # a later change of a billed record: counted before
        ("charged", "charged", False),
    ],
)
def test_only_the_transition_to_billed_counts(new: str, old: str | None, counts: bool) -> None:
    old_image = usage("r1", old) if old else None
    record = stream_record(usage("r1", new), old_image)
    assert (rollups.contribution(record) is not None) is counts


def test_a_removed_record_counts_nothing() -> None:
    record = stream_record(None, usage("r1", "charged"), event="REMOVE")
    assert rollups.contribution(record) is None


def test_fold_groups_by_user_day_model_and_key_and_counts_a_repeat_once() -> None:
    records = [
        stream_record(usage("a", "charged", quota=5)),
        stream_record(usage("b", "charged", quota=7, key="k1")),
        stream_record(usage("c", "settled", quota=11), usage("c", "reserved")),
        stream_record(usage("d", "charged", quota=13, model="m2")),
        stream_record(usage("e", "charged", quota=17, at="2026-11-03T00:00:00.000000Z")),
        stream_record(usage("f", "charged", quota=19, user="u2")),
        stream_record(usage("a", "charged", quota=5)),  # the same record again
    ]
    groups = {
        (g.key.user_id, g.key.day, g.key.model, g.key.key_id): sorted(
            c.request_id for c in g.contributions
        )
        for g in rollups.fold(records)
    }
    assert groups == {
        ("u1", "2026-11-02", "m1", None): ["a", "c"],
        ("u1", "2026-11-02", "m1", "k1"): ["b"],
        ("u1", "2026-11-02", "m2", None): ["d"],
        ("u1", "2026-11-03", "m1", None): ["e"],
        ("u2", "2026-11-02", "m1", None): ["f"],
    }


def test_bucket_names_cannot_collide_through_the_separator() -> None:
    assert rollups.bucket_name("2026-11-02", "a#b", None) != rollups.bucket_name(
        "2026-11-02", "a", "b"
    )
    assert rollups.bucket_name("2026-11-02", "a", None) != rollups.bucket_name(
        "2026-11-02", "a", ""
    )


# ---------------------------------------------------------------- the write


@pytest.fixture(scope="module")
def aws() -> Iterator[EmbeddedAws]:
    with embedded_tables() as embedded:
        yield embedded


SPAN = DayRange(*(summary.date_range.parse_date("d", d) for d in ("2026-11-01", "2026-11-05")))


def totals(user: str, group_by: GroupBy = GroupBy.DAY) -> dict[str, Any]:
    return summary.summarize(summary.read_rollups(user, SPAN), SPAN, group_by)


def test_a_batch_delivered_twice_changes_nothing(aws: EmbeddedAws) -> None:
    user = f"u-{uuid.uuid4().hex}"
    batch = [
        stream_record(usage(f"r{n}", "charged", user=user, quota=n + 1, model=f"m{n % 2}"))
        for n in range(250)  # more than one transaction per rollup item
    ]
    assert rollups.apply_stream_records(batch) == []
    first = totals(user)
    assert rollups.apply_stream_records(batch) == []
    assert totals(user) == first
    assert first["total"] == {
        "quota": sum(n + 1 for n in range(250)),
        "requests": 250,
        "prompt_tokens": 750,
        "completion_tokens": 1000,
    }
    by_model = {b["key"]: b["quota"] for b in totals(user, GroupBy.MODEL)["buckets"]}
    assert by_model == {
        "m0": sum(n + 1 for n in range(0, 250, 2)),
        "m1": sum(n + 1 for n in range(1, 250, 2)),
    }


def test_a_partly_counted_batch_adds_only_the_new_records(aws: EmbeddedAws) -> None:
    user = f"u-{uuid.uuid4().hex}"
    earlier = [stream_record(usage(f"r{n}", "charged", user=user, quota=100)) for n in range(3)]
    assert rollups.apply_stream_records(earlier[:2]) == []
    # The retry holds the counted records and new ones, in one transaction per rollup item.
    assert rollups.apply_stream_records(earlier) == []
    assert totals(user)["total"]["quota"] == 300
    assert totals(user)["total"]["requests"] == 3
    marker = RollupMarker.get(rollups.marker_partition(user, "r0"), "r#r0", consistent_read=True)
    assert marker.rollup == rollups.bucket_name("2026-11-02", "m1", None)


def test_a_failed_write_is_reported_for_the_retry(aws: EmbeddedAws) -> None:
    from local.aws import Fault

    user = f"u-{uuid.uuid4().hex}"
    batch = [stream_record(usage(f"r{n}", "charged", user=user)) for n in range(3)]
    aws.registry.add(
        Fault(
            service="dynamodb",
            operation="TransactWriteItems",
            error_code="ValidationException",
            count=1,
            after_commit=True,
        )
    )
    failed = rollups.apply_stream_records(batch)
    # The write committed but its answer was an error: all reported, and the retry (the
    # stream's) meets the markers.
    assert failed == [r["dynamodb"]["SequenceNumber"] for r in batch]
    assert rollups.apply_stream_records(batch) == []
    assert totals(user)["total"]["quota"] == 30
    assert list(UsageRollup.query(user, consistent_read=True))  # one rollup item written


def test_users_are_apart(aws: EmbeddedAws) -> None:
    alice, bob = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    rollups.apply_stream_records(
        [
            stream_record(usage("shared-id", "charged", user=alice, quota=5)),
            stream_record(usage("other", "charged", user=bob, quota=9)),
        ]
    )
    assert totals(alice)["total"]["quota"] == 5
    assert totals(bob)["total"]["quota"] == 9


def test_the_sample_stream_event_folds_into_two_rollups() -> None:
    import json
    from pathlib import Path

    sample = json.loads(
        (Path(__file__).resolve().parents[2] / "events" / "usage_rollup_stream.json").read_text()
    )
    groups = rollups.fold(sample["Records"])
    assert [(g.key.model, g.key.key_id, [c.quota for c in g.contributions]) for g in groups] == [
        ("gpt-4o", "key-prod", [1125]),
        ("gpt-4o-mini", None, [300]),
    ]
