"""Audit trail of admin actions: who did what, to what, when."""

from __future__ import annotations

import uuid
from typing import Any

from billing import clock
from billing.models import AuditRecord


def record(actor: str, action: str, target: str = "", detail: dict[str, Any] | None = None) -> None:
    """Write one audit record. Never put secrets or plaintext codes in `detail`."""
    at = clock.iso()
    AuditRecord(
        day=at[:10],
        entry=f"{at}#{uuid.uuid4().hex}",
        actor=actor,
        action=action,
        target=target,
        detail=detail or {},
        created_at=at,
    ).save()
