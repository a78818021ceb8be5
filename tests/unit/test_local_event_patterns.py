"""Event patterns as EventBridge rules and Lambda's FilterCriteria match them
(local/event_patterns.py), table-driven."""

# One case per line, so that the tables read as tables.
# ruff: noqa: E501

from __future__ import annotations

from typing import Any

import pytest

from local.event_patterns import PatternError, compile_pattern

EVENT: dict[str, Any] = {
    "source": "quota.billing",
    "detail-type": "balance.low",
    "resources": ["arn:aws:x:1", "arn:aws:y:2"],
    "detail": {
        "balance": 5,
        "plan": "Pro",
        "tags": ["a", "b"],
        "ip": "10.1.2.3",
        "empty": None,
        "flag": True,
        "user": {"id": "u-123", "tier": "gold"},
    },
}

MATCHES: list[tuple[str, dict[str, Any], bool]] = [
    ("exact string", {"source": ["quota.billing"]}, True),
    ("other string", {"source": ["quota.other"]}, False),
    ("one of several", {"source": ["x", "quota.billing"]}, True),
    ("every field must match", {"source": ["quota.billing"], "detail-type": ["balance.high"]}, False),
    ("nested", {"detail": {"user": {"tier": ["gold"]}}}, True),
    ("nested mismatch", {"detail": {"user": {"tier": ["silver"]}}}, False),
    ("absent field", {"detail": {"missing": ["x"]}}, False),
    ("array: any element", {"detail": {"tags": ["b"]}}, True),
    ("array: none", {"detail": {"tags": ["c"]}}, False),
    ("number equality", {"detail": {"balance": [5.0]}}, True),
    ("a string is no number", {"detail": {"balance": ["5"]}}, False),
    ("null", {"detail": {"empty": [None]}}, True),
    ("boolean", {"detail": {"flag": [True]}}, True),
    ("true is not 1", {"detail": {"flag": [1]}}, False),
    ("prefix", {"detail-type": [{"prefix": "balance."}]}, True),
    ("prefix ignoring case", {"detail": {"plan": [{"prefix": {"equals-ignore-case": "pr"}}]}}, True),
    ("suffix", {"detail-type": [{"suffix": ".low"}]}, True),
    ("suffix mismatch", {"detail-type": [{"suffix": ".high"}]}, False),
    ("equals-ignore-case", {"detail": {"plan": [{"equals-ignore-case": "pRO"}]}}, True),
    ("wildcard", {"source": [{"wildcard": "quota.*"}]}, True),
    ("wildcard mismatch", {"source": [{"wildcard": "*.other"}]}, False),
    ("anything-but a value", {"detail": {"plan": [{"anything-but": "Free"}]}}, True),
    ("anything-but that value", {"detail": {"plan": [{"anything-but": ["Pro", "Free"]}]}}, False),
    ("anything-but a prefix", {"detail": {"plan": [{"anything-but": {"prefix": "P"}}]}}, False),
    ("anything-but an absent field", {"detail": {"missing": [{"anything-but": "x"}]}}, False),
    ("numeric range", {"detail": {"balance": [{"numeric": [">", 0, "<=", 5]}]}}, True),
    ("numeric out of range", {"detail": {"balance": [{"numeric": ["<", 5]}]}}, False),
    ("numeric on a string", {"detail": {"plan": [{"numeric": [">", 0]}]}}, False),
    ("exists", {"detail": {"plan": [{"exists": True}]}}, True),
    ("exists on an absent field", {"detail": {"missing": [{"exists": True}]}}, False),
    ("not exists on an absent field", {"detail": {"missing": [{"exists": False}]}}, True),
    ("not exists on a present field", {"detail": {"plan": [{"exists": False}]}}, False),
    ("not exists below an absent object", {"nowhere": {"x": [{"exists": False}]}}, True),
    ("cidr", {"detail": {"ip": [{"cidr": "10.0.0.0/8"}]}}, True),
    ("cidr mismatch", {"detail": {"ip": [{"cidr": "192.168.0.0/16"}]}}, False),
    ("$or: one branch", {"$or": [{"source": ["x"]}, {"detail": {"balance": [5]}}]}, True),
    ("$or: no branch", {"$or": [{"source": ["x"]}, {"detail": {"balance": [6]}}]}, False),
    ("$or beside a field", {"source": ["quota.billing"], "$or": [{"detail-type": ["x"]}, {"detail-type": ["y"]}]}, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("pattern", "expected"), [c[1:] for c in MATCHES], ids=[c[0] for c in MATCHES]
)
def test_matching(pattern: dict[str, Any], expected: bool) -> None:
    assert compile_pattern(pattern).matches(EVENT) is expected


def test_a_dynamodb_stream_record_as_lambda_filters_it() -> None:
    pattern = compile_pattern(
        '{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"kind": {"S": ["wanted"]}}}}'
    )
    record = {"eventName": "INSERT", "dynamodb": {"NewImage": {"kind": {"S": "wanted"}}}}
    assert pattern.matches(record)
    assert not pattern.matches({**record, "eventName": "MODIFY"})
    assert not pattern.matches({"eventName": "INSERT", "dynamodb": {"Keys": {}}})


REFUSED: list[tuple[str, Any]] = [
    ("not JSON", "{source"),
    ("not an object", ["source"]),
    ("empty", {}),
    ("a value outside a list", {"source": "quota.billing"}),
    ("an empty list", {"source": []}),
    ("an empty object", {"detail": {}}),
    ("unknown matcher", {"source": [{"regex": "q.*"}]}),
    ("two keys in a matcher", {"source": [{"prefix": "a", "suffix": "b"}]}),
    ("numeric without a number", {"n": [{"numeric": [">", "1"]}]}),
    ("numeric with a bad operator", {"n": [{"numeric": ["~", 1]}]}),
    ("exists not a boolean", {"n": [{"exists": "yes"}]}),
    ("$or with one branch", {"$or": [{"source": ["x"]}]}),
    ("consecutive wildcards", {"source": [{"wildcard": "a**b"}]}),
    ("bad cidr", {"ip": [{"cidr": "10.0.0.0/99"}]}),
]  # fmt: skip


@pytest.mark.parametrize("pattern", [c[1] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_patterns_aws_refuses(pattern: Any) -> None:
    with pytest.raises(PatternError):
        compile_pattern(pattern)
