"""Usage history: the caller's usage records, newest first."""

from __future__ import annotations

from typing import Any

from billing.models import UsageRecord
from billing.pagination import newest_first


def render_usage(record: UsageRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "model": record.model,
        "group": record.group,
        "prompt_tokens": int(record.prompt_tokens),
        "completion_tokens": int(record.completion_tokens),
        "quota": int(record.quota),
        "hold_quota": int(record.hold_quota),
        "status": record.status,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def list_usage(user_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
    return newest_first(UsageRecord.by_user.query, "user_id", user_id, limit, cursor, render_usage)
