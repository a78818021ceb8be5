"""Event patterns, as EventBridge rules and Lambda's FilterCriteria use them (one syntax).

A pattern is a JSON object whose leaves are lists of matchers; an event matches when every
field the pattern names matches one of its matchers (an array in the event matches when any
of its elements does). Matchers: a literal (string, number, boolean, null), ``prefix``,
``suffix`` (either may wrap ``equals-ignore-case``), ``equals-ignore-case``,
``anything-but`` (a literal, a list of them, or a ``prefix``/``suffix``/
``equals-ignore-case``/``wildcard``), ``numeric`` (up to two comparisons), ``exists``,
``wildcard`` and ``cidr``; ``$or`` (a list of patterns) may appear at any level. Written from
EventBridge's "Event patterns" and "Content filtering" documentation.

A pattern is checked when it is compiled (``PatternError`` with the reason), so a template
with one that AWS would refuse fails the start.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_MISSING = object()
_NUMERIC_OPERATORS = {"<", "<=", "=", ">", ">=", "!="}
_MATCHER_KEYS = {
    "prefix",
    "suffix",
    "equals-ignore-case",
    "anything-but",
    "numeric",
    "exists",
    "wildcard",
    "cidr",
}


class PatternError(ValueError):
    """The pattern is not one EventBridge (or Lambda's event filtering) would accept."""


Matcher = Callable[[Any], bool]  # one value of the event (never a list) -> matched


@dataclass(frozen=True)
class _Field:
    name: str
    matchers: tuple[Matcher, ...]  # any one matching is enough
    absent_matches: bool  # an {"exists": false} among them


@dataclass(frozen=True)
class Pattern:
    fields: tuple[_Field, ...]
    nested: tuple[tuple[str, Pattern], ...]
    alternatives: tuple[tuple[Pattern, ...], ...]  # each "$or": one of these must match

    def matches(self, event: Any) -> bool:
        if not isinstance(event, Mapping):
            event = {}
        for field in self.fields:
            value = event.get(field.name, _MISSING)
            if not _field_matches(field, value):
                return False
        for name, pattern in self.nested:
            value = event.get(name, _MISSING)
            if isinstance(value, list):
                if not any(pattern.matches(v) for v in value if isinstance(v, Mapping)):
                    return False
            elif not pattern.matches(value if isinstance(value, Mapping) else {}):
                return False
        return all(any(p.matches(event) for p in group) for group in self.alternatives)


def _field_matches(field: _Field, value: Any) -> bool:
    if value is _MISSING:
        return field.absent_matches
    values = value if isinstance(value, list) else [value]
    return any(matcher(v) for v in values for matcher in field.matchers)


def compile_pattern(pattern: Any) -> Pattern:
    """A pattern from its JSON text or its parsed object; PatternError if AWS would refuse it."""
    if isinstance(pattern, str):
        try:
            pattern = json.loads(pattern)
        except ValueError as exc:
            raise PatternError(f"the pattern is not valid JSON: {exc}") from None
    if not isinstance(pattern, dict):
        raise PatternError("the pattern must be a JSON object")
    if not pattern:
        raise PatternError("the pattern is empty")
    return _object(pattern, "")


def _object(spec: dict[str, Any], where: str) -> Pattern:
    fields: list[_Field] = []
    nested: list[tuple[str, Pattern]] = []
    alternatives: list[tuple[Pattern, ...]] = []
    for name, value in spec.items():
        path = f"{where}.{name}" if where else name
        if name == "$or":
            if not isinstance(value, list) or len(value) < 2:
                raise PatternError(f"{path}: $or takes a list of at least two patterns")
            options = []
            for option in value:
                if not isinstance(option, dict) or not option:
                    raise PatternError(f"{path}: each $or alternative is a non-empty object")
                options.append(_object(option, where))
            alternatives.append(tuple(options))
        elif isinstance(value, dict):
            if not value:
                raise PatternError(f"{path}: an empty object matches nothing")
            nested.append((name, _object(value, path)))
        elif isinstance(value, list):
            if not value:
                raise PatternError(f"{path}: an empty list of matchers")
            matchers = [_matcher(item, path) for item in value]
            absent = any(isinstance(item, dict) and item.get("exists") is False for item in value)
            fields.append(_Field(name, tuple(m for m in matchers if m is not None), absent))
        else:
            example = json.dumps(value)
            raise PatternError(f"{path}: match values must be in a list, e.g. [{example}]")
    return Pattern(tuple(fields), tuple(nested), tuple(alternatives))


# ---------------------------------------------------------------- matchers


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _literal(expected: Any) -> Matcher:
    if _is_number(expected):
        return lambda value: _is_number(value) and float(value) == float(expected)
    if isinstance(expected, bool):
        return lambda value: isinstance(value, bool) and value is expected
    return lambda value: value == expected and type(value) is type(expected)


def _matcher(item: Any, path: str) -> Matcher | None:
    """One matcher; None for {"exists": false}, which only an absent field satisfies."""
    if item is None or isinstance(item, (str, int, float, bool)):
        return _literal(item)
    if not isinstance(item, dict) or len(item) != 1:
        raise PatternError(f"{path}: a matcher is a literal or an object with one key")
    ((kind, argument),) = item.items()
    if kind not in _MATCHER_KEYS:
        raise PatternError(f"{path}: unknown matcher {kind!r}")
    if kind == "exists":
        if not isinstance(argument, bool):
            raise PatternError(f"{path}: exists takes true or false")
        return (lambda value: True) if argument else None
    if kind == "prefix":
        return _affix(argument, path, "prefix", str.startswith)
    if kind == "suffix":
        return _affix(argument, path, "suffix", str.endswith)
    if kind == "equals-ignore-case":
        text = _string(argument, path, kind)
        return lambda value: isinstance(value, str) and value.casefold() == text.casefold()
    if kind == "wildcard":
        regex = _wildcard(_string(argument, path, kind), path)
        return lambda value: isinstance(value, str) and regex.fullmatch(value) is not None
    if kind == "numeric":
        return _numeric(argument, path)
    if kind == "cidr":
        try:
            network = ipaddress.ip_network(_string(argument, path, kind), strict=False)
        except ValueError as exc:
            raise PatternError(f"{path}: cidr {argument!r} is not a network: {exc}") from None
        return lambda value: _in_network(value, network)
    return _anything_but(argument, path)


def _string(argument: Any, path: str, kind: str) -> str:
    if not isinstance(argument, str):
        raise PatternError(f"{path}: {kind} takes a string")
    return argument


def _affix(argument: Any, path: str, kind: str, test: Callable[[str, str], bool]) -> Matcher:
    if isinstance(argument, dict) and set(argument) == {"equals-ignore-case"}:
        text = _string(argument["equals-ignore-case"], path, kind).casefold()
        return lambda value: isinstance(value, str) and test(value.casefold(), text)
    text = _string(argument, path, kind)
    return lambda value: isinstance(value, str) and test(value, text)


def _wildcard(text: str, path: str) -> re.Pattern[str]:
    if "**" in text:
        raise PatternError(f"{path}: consecutive wildcard characters are not allowed")
    parts = re.split(r"(?<!\\)\*", text)
    return re.compile(".*".join(re.escape(part.replace("\\*", "*")) for part in parts), re.DOTALL)


def _numeric(argument: Any, path: str) -> Matcher:
    if not isinstance(argument, list) or len(argument) not in (2, 4):
        raise PatternError(f"{path}: numeric takes one or two [operator, number] pairs")
    checks: list[tuple[str, float]] = []
    for index in range(0, len(argument), 2):
        operator, bound = argument[index], argument[index + 1]
        if operator not in _NUMERIC_OPERATORS or not _is_number(bound):
            raise PatternError(f"{path}: numeric: {operator!r} {bound!r} is not a comparison")
        checks.append((str(operator), float(bound)))
    compare: dict[str, Callable[[float, float], bool]] = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        "=": lambda a, b: a == b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
        "!=": lambda a, b: a != b,
    }
    return lambda value: (
        _is_number(value) and all(compare[op](float(value), bound) for op, bound in checks)
    )


def _in_network(value: Any, network: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return ipaddress.ip_address(value) in network
    except ValueError:
        return False


def _anything_but(argument: Any, path: str) -> Matcher:
    if isinstance(argument, dict):
        if len(argument) != 1:
            raise PatternError(f"{path}: anything-but takes one nested matcher")
        ((kind, inner),) = argument.items()
        if kind not in ("prefix", "suffix", "equals-ignore-case", "wildcard"):
            raise PatternError(f"{path}: anything-but cannot nest {kind!r}")
        if kind == "equals-ignore-case" and isinstance(inner, list):
            texts = {_string(t, path, kind).casefold() for t in inner}
            return lambda value: isinstance(value, str) and value.casefold() not in texts
        positive = _matcher({kind: inner}, path)
        assert positive is not None
        return lambda value: isinstance(value, str) and not positive(value)
    excluded = argument if isinstance(argument, list) else [argument]
    if not excluded:
        raise PatternError(f"{path}: anything-but needs at least one value")
    literals = []
    for value in excluded:
        if not (isinstance(value, (str, int, float)) and not isinstance(value, bool)):
            raise PatternError(f"{path}: anything-but takes strings or numbers")
        literals.append(_literal(value))
    return lambda value: value is not None and not any(m(value) for m in literals)
