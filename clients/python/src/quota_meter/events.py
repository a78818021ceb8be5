"""Usage events checked before anything is sent: a bad argument is a `ValueError` here,
never a call that the function would refuse (or, worse, half-apply in a batch).

The checks are the function's own (API.md "Usage metering"): the four actions, non-empty
names of at most 128 characters, whole non-negative token counts, and no other fields. A
missing `request_id` is made here, once (uuid4), so every retry of the event carries it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

ACTIONS = ("charge", "reserve", "settle", "release")
MAX_BATCH_EVENTS = 500  # the function's limit per invocation (limits.max_batch_events)
MAX_NAME = 128
MAX_TOKENS = 10**15  # the function's bound: every price stays exact below it
_NAMES = ("request_id", "user_id", "model")
_OPTIONAL_NAMES = ("group", "key_id")
_TOKENS = ("prompt_tokens", "completion_tokens")
_FIELDS = frozenset({"action", *_NAMES, *_OPTIONAL_NAMES, *_TOKENS})


def new_request_id() -> str:
    return str(uuid.uuid4())


def build_event(action: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A checked event payload for `action`; ValueError names the first bad argument."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    if fields.get("action", action) != action:
        raise ValueError(f"action {fields['action']!r} given to {action}")
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown usage event field {unknown[0]!r}")
    event: dict[str, Any] = {"action": action}
    request_id = fields.get("request_id")
    event["request_id"] = new_request_id() if request_id is None else request_id
    for name in _NAMES:
        if name != "request_id":
            event[name] = fields.get(name)
        _check_name(name, event[name])
    for name in _TOKENS:
        value = fields.get(name)
        if value is None and action == "release":
            value = 0  # a release moves no tokens; the function still wants the fields
        _check_tokens(name, value)
        event[name] = value
    for name in _OPTIONAL_NAMES:
        value = fields.get(name)
        if value is not None:
            _check_name(name, value)
            event[name] = value
    return event


def build_batch_event(raw: Any, index: int) -> dict[str, Any]:
    """One event of a batch: a mapping with its own `action`."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"event {index} is not a mapping")
    fields = dict(raw)
    action = fields.pop("action", None)
    try:
        return build_event(action if isinstance(action, str) else repr(action), fields)
    except ValueError as exc:
        raise ValueError(f"event {index}: {exc}") from None


def _check_name(name: str, value: Any) -> None:
    if value is None:
        raise ValueError(f"{name} is required")
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise ValueError(f"{name} must be a non-empty string of at most {MAX_NAME} characters")


def _check_tokens(name: str, value: Any) -> None:
    if value is None:
        raise ValueError(f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} cannot be negative")
    if value > MAX_TOKENS:
        raise ValueError(f"{name} is above {MAX_TOKENS}")
