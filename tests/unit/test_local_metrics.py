"""The local stack reads metrics from EMF lines as CloudWatch does, and only from valid ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from local.metrics import MetricsCollector, parse_emf


def emf(values: Any, **dimensions: Any) -> str:
    return json.dumps(
        {
            "_aws": {
                "Timestamp": 1,
                "CloudWatchMetrics": [
                    {
                        "Namespace": "QuotaTopup",
                        "Dimensions": [sorted(dimensions)],
                        "Metrics": [{"Name": "TopupsCredited", "Unit": "Count"}],
                    }
                ],
            },
            "TopupsCredited": values,
            **dimensions,
        }
    )


def test_values_are_summed_per_dimension_set() -> None:
    collector = MetricsCollector()
    collector.observe("fn", emf([1.0], provider="stripe", service="credit_payment"))
    collector.observe("fn", emf(2, provider="stripe", service="credit_payment"))
    collector.observe("fn", emf([5, 5], provider="epay", service="credit_payment"))
    rows = {row["dimensions"]["provider"]: row for row in collector.report()["metrics"]}
    assert (rows["stripe"]["sum"], rows["stripe"]["count"]) == (3.0, 2)
    assert (rows["epay"]["sum"], rows["epay"]["count"]) == (10.0, 2)
    assert collector.report(name="Other")["metrics"] == []
    collector.clear()
    assert collector.report() == {"metrics": [], "lines": 0}


@pytest.mark.parametrize(
    "line",
    [
        '{"level": "INFO", "message": "credited"}',
        "not json {",
        emf("1", provider="stripe"),  # a value that is not a number
        emf([True], provider="stripe"),
        emf([1], provider=7),  # a dimension without a string value
        emf(list(range(101)), provider="stripe"),  # over CloudWatch's 100 values
        json.dumps({"_aws": {"CloudWatchMetrics": [{"Metrics": [{"Name": "X"}]}]}, "X": 1}),
    ],
)
def test_lines_cloudwatch_would_not_read_are_not_metrics(line: str) -> None:
    assert parse_emf(line) == []


def test_the_stacks_own_messages_are_not_read() -> None:
    collector = MetricsCollector()
    collector.observe("local", emf([1], provider="stripe"))
    assert collector.report()["metrics"] == []
