"""Operations: reconciliation (read-only checks of every balance and order against the
ledger), admin adjustments, and the audit trail of admin actions.

This is the package's face: the names other packages may use. Everything else is private.
"""

from billing.ops.audit import record as record_audit

__all__ = ["record_audit"]
