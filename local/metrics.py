"""The metrics the functions emit, read from their output as CloudWatch reads it.

A function publishes a metric by printing one Embedded Metric Format (EMF) line to its log;
CloudWatch Logs extracts it. The local stack sees the same lines on the workers' output and
keeps their sums per namespace, metric name and dimension set, for GET /_local/metrics.
Lines that are not EMF (or are EMF that CloudWatch would reject) are not metrics.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# CloudWatch accepts at most 100 values per metric in one EMF document and 30 dimensions.
_MAX_VALUES = 100
_MAX_DIMENSIONS = 30


@dataclass(frozen=True)
class Series:
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]


@dataclass
class Totals:
    unit: str
    sum: float = 0.0
    count: int = 0

    def add(self, values: list[float]) -> None:
        self.sum += sum(values)
        self.count += len(values)


def parse_emf(line: str) -> list[tuple[Series, str, list[float]]]:
    """The metric values one log line carries; [] when it is not a valid EMF document."""
    text = line.strip()
    if not text.startswith("{") or '"_aws"' not in text:
        return []
    try:
        document = json.loads(text)
    except ValueError:
        return []
    meta = document.get("_aws") if isinstance(document, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("CloudWatchMetrics"), list):
        return []
    found: list[tuple[Series, str, list[float]]] = []
    for directive in meta["CloudWatchMetrics"]:
        found.extend(_directive_values(document, directive))
    return found


def _directive_values(
    document: Mapping[str, Any], directive: Any
) -> list[tuple[Series, str, list[float]]]:
    if not isinstance(directive, dict):
        return []
    namespace = directive.get("Namespace")
    if not isinstance(namespace, str) or not namespace:
        return []
    dimension_sets = directive.get("Dimensions") or [[]]
    found: list[tuple[Series, str, list[float]]] = []
    for names in dimension_sets:
        if not isinstance(names, list) or len(names) > _MAX_DIMENSIONS:
            continue
        values_of = {name: document.get(name) for name in names}
        if not all(isinstance(value, str) for value in values_of.values()):
            continue  # a dimension without its string value: CloudWatch drops the metric
        dimensions = tuple(sorted((name, str(value)) for name, value in values_of.items()))
        for metric in directive.get("Metrics") or []:
            if not isinstance(metric, dict) or not isinstance(metric.get("Name"), str):
                continue
            values = _numbers(document.get(metric["Name"]))
            if values:
                series = Series(namespace, metric["Name"], dimensions)
                found.append((series, str(metric.get("Unit") or "None"), values))
    return found


def _numbers(raw: Any) -> list[float]:
    items = raw if isinstance(raw, list) else [raw]
    if len(items) > _MAX_VALUES:
        return []
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        return []
    return [float(v) for v in items]


class MetricsCollector:
    """Sums of the EMF metrics seen on the functions' output."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[Series, Totals] = {}
        self.lines = 0

    def observe(self, source: str, line: str) -> None:
        if source == "local":
            return  # the stack's own messages, not a function's log
        parsed = parse_emf(line)
        if not parsed:
            return
        with self._lock:
            self.lines += 1
            for series, unit, values in parsed:
                totals = self._totals.setdefault(series, Totals(unit=unit))
                totals.add(values)

    def clear(self) -> None:
        with self._lock:
            self._totals.clear()
            self.lines = 0

    def report(self, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        with self._lock:
            rows: list[dict[str, Any]] = [
                {
                    "namespace": series.namespace,
                    "name": series.name,
                    "dimensions": dict(series.dimensions),
                    "unit": totals.unit,
                    "sum": totals.sum,
                    "count": totals.count,
                }
                for series, totals in self._totals.items()
                if (name is None or series.name == name)
                and (namespace is None or series.namespace == namespace)
            ]
        rows.sort(key=_row_order)
        return {"metrics": rows, "lines": self.lines}


def _row_order(row: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]]]:
    dimensions: dict[str, str] = row["dimensions"]
    return (row["namespace"], row["name"], sorted(dimensions.items()))
