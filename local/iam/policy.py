"""Identity-based policy documents and their evaluation, as IAM does it for one principal.

An explicit Deny in any policy wins; otherwise an Allow in any policy allows; otherwise the
request is implicitly denied. A permissions boundary, when the role has one, must allow the
request too. ``Action``/``NotAction`` match case-insensitively, ``Resource``/``NotResource``
case-sensitively, both with ``*`` and ``?`` wildcards; as IAM documents it, a ``*`` stays
within its colon-separated segment unless it ends the segment, where it may expand past
colons (``arn:aws:sqs:*`` matches every queue).

The local stack has no request context, so a statement with a ``Condition`` never matches
(for an Allow that is stricter than AWS, for a Deny more lenient; the stack warns about such
Deny statements when it loads them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any


class PolicyError(ValueError):
    """A policy document that IAM would refuse."""


class Decision(Enum):
    ALLOW = "allow"
    EXPLICIT_DENY = "explicit_deny"
    IMPLICIT_DENY = "implicit_deny"

    @property
    def allowed(self) -> bool:
        return self is Decision.ALLOW


_STATEMENT_KEYS = {
    "Sid",
    "Effect",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
}


def _strings(value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise PolicyError(f"{where} must be a string or a non-empty list of strings: {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class Statement:
    effect: str  # "Allow" or "Deny"
    actions: tuple[str, ...]
    actions_negated: bool  # NotAction
    resources: tuple[str, ...]
    resources_negated: bool  # NotResource
    has_condition: bool
    sid: str | None = None

    @classmethod
    def parse(cls, raw: Any, where: str = "statement") -> Statement:
        if not isinstance(raw, Mapping):
            raise PolicyError(f"{where} is not an object: {raw!r}")
        unknown = set(raw) - _STATEMENT_KEYS
        if "Principal" in raw or "NotPrincipal" in raw:
            raise PolicyError(f"{where}: identity-based policies cannot name a Principal")
        if unknown:
            raise PolicyError(f"{where}: unknown elements {sorted(unknown)}")
        effect = raw.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise PolicyError(f"{where}: Effect must be Allow or Deny, not {effect!r}")
        if ("Action" in raw) == ("NotAction" in raw):
            raise PolicyError(f"{where}: exactly one of Action and NotAction is required")
        if ("Resource" in raw) == ("NotResource" in raw):
            raise PolicyError(f"{where}: exactly one of Resource and NotResource is required")
        action_key = "Action" if "Action" in raw else "NotAction"
        resource_key = "Resource" if "Resource" in raw else "NotResource"
        condition = raw.get("Condition")
        if condition is not None and not isinstance(condition, Mapping):
            raise PolicyError(f"{where}: Condition must be an object")
        sid = raw.get("Sid")
        return cls(
            effect=str(effect),
            actions=_strings(raw[action_key], f"{where}.{action_key}"),
            actions_negated=action_key == "NotAction",
            resources=_strings(raw[resource_key], f"{where}.{resource_key}"),
            resources_negated=resource_key == "NotResource",
            has_condition=bool(condition),
            sid=None if sid is None else str(sid),
        )

    def matches(self, action: str, resource: str) -> bool:
        if self.has_condition:
            return False  # no request context to evaluate it against
        action_hit = any(action_matches(p, action) for p in self.actions)
        if action_hit == self.actions_negated:
            return False
        resource_hit = any(resource_matches(p, resource) for p in self.resources)
        return resource_hit != self.resources_negated


@dataclass(frozen=True)
class Policy:
    name: str
    statements: tuple[Statement, ...]

    @classmethod
    def parse(cls, name: str, document: Any) -> Policy:
        if not isinstance(document, Mapping):
            raise PolicyError(f"policy {name}: the document is not an object")
        raw = document.get("Statement")
        if raw is None:
            raise PolicyError(f"policy {name}: no Statement")
        items = raw if isinstance(raw, list) else [raw]
        return cls(
            name=name,
            statements=tuple(
                Statement.parse(item, f"policy {name}, statement {index}")
                for index, item in enumerate(items)
            ),
        )


def evaluate(policies: Iterable[Policy], action: str, resource: str) -> Decision:
    """IAM's decision for one action on one resource under these identity-based policies."""
    allowed = False
    for policy in policies:
        for statement in policy.statements:
            if not statement.matches(action, resource):
                continue
            if statement.effect == "Deny":
                return Decision.EXPLICIT_DENY
            allowed = True
    return Decision.ALLOW if allowed else Decision.IMPLICIT_DENY


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    by_boundary: bool = False  # decided by the permissions boundary

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


def authorize(
    policies: Sequence[Policy], boundary: Sequence[Policy] | None, action: str, resource: str
) -> Verdict:
    """The identity policies' decision, limited by a permissions boundary when there is one
    (the boundary grants nothing by itself: both must allow)."""
    decision = evaluate(policies, action, resource)
    if boundary is None or decision is Decision.EXPLICIT_DENY:
        return Verdict(decision)
    limit = evaluate(boundary, action, resource)
    if limit is Decision.EXPLICIT_DENY:
        return Verdict(limit, by_boundary=True)
    if decision.allowed and not limit.allowed:
        return Verdict(Decision.IMPLICIT_DENY, by_boundary=True)
    return Verdict(decision)


# ---------------------------------------------------------------- wildcards

# Policy variables IAM always knows how to expand; any other ${...} needs the request context.
_LITERAL_VARIABLES = {"${*}": "*", "${?}": "?", "${$}": "$"}
_VARIABLE = re.compile(r"\$\{[^}]*\}")


@lru_cache(maxsize=4096)
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str] | None:
    """A regular expression for a policy pattern; None if it cannot match without context."""
    parts: list[str] = []
    position = 0
    for match in _VARIABLE.finditer(pattern):
        parts.append(_translate(pattern[position : match.start()]))
        literal = _LITERAL_VARIABLES.get(match.group(0))
        if literal is None:
            return None
        parts.append(re.escape(literal))
        position = match.end()
    parts.append(_translate(pattern[position:]))
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("".join(parts), flags)


def _translate(text: str) -> str:
    out = []
    for index, char in enumerate(text):
        if char == "*":
            ends_segment = index + 1 == len(text) or text[index + 1] == ":"
            out.append(".*" if ends_segment else "[^:]*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    return "".join(out)


def _glob_match(pattern: str, value: str, ignore_case: bool) -> bool:
    compiled = _glob(pattern, ignore_case)
    return compiled is not None and compiled.fullmatch(value) is not None


def action_matches(pattern: str, action: str) -> bool:
    """``dynamodb:Get*`` matches ``dynamodb:GetItem``; case does not matter."""
    return _glob_match(pattern, action, ignore_case=True)


def resource_matches(pattern: str, resource: str) -> bool:
    """``arn:aws:dynamodb:*:*:table/Orders/index/*`` matches the indexes of Orders."""
    return _glob_match(pattern, resource, ignore_case=False)
