"""Refunds in proportion: the pure arithmetic of taking a credit back (no I/O).

After refunds totalling R of an order's pay_money P, the reversed quota totals
floor(quota x R / P), all of it once R = P; a chargeback (dispute) takes back all that remains.
The inviter's rebate follows the same ratio. Each refund notification becomes at most one
`Step`: the move from what was refunded before to what is refunded after it, named so that
the ledger can tell a step it has already written.

Providers report refunds in two ways:
- cumulatively (Stripe's `amount_refunded`: the total so far). A total at or below what was
  already counted is stale or repeated and changes nothing, so events may come in any order;
- one refund at a time, with its own id (Creem, Waffo). An id already counted changes nothing;
  a provider's "fully refunded" status counts as the whole of P, so a partial refund that
  arrives after it is not added twice.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

DISPUTE_STEP = "dispute"


def share(total: int, ratio: Fraction) -> int:
    """floor(total x ratio) for 0 <= ratio <= 1, exactly (all of it at 1)."""
    if ratio >= 1:
        return total
    if ratio <= 0:
        return 0
    return total * ratio.numerator // ratio.denominator


def ratio(refunded: Decimal, paid: Decimal) -> Fraction:
    """R / P as an exact fraction, capped to 0..1."""
    if paid <= 0 or refunded <= 0:
        return Fraction(0)
    return min(Fraction(refunded) / Fraction(paid), Fraction(1))


class Refund(NamedTuple):
    """What one verified notification says about an order's refunds."""

    amount: Decimal | None  # major units; None when the provider did not say
    cumulative: bool  # amount is the total refunded so far (else: this refund alone)
    full: bool  # the provider says the order is now fully refunded
    refund_id: str | None = None  # the provider's id of this refund (non-cumulative)


class Step(NamedTuple):
    """One move of an order's reversal: from `before` to `after` (fractions of P)."""

    key: str  # names the step's ledger entries: the refunded total in minor units, or "dispute"
    before: Fraction
    after: Fraction
    refunded_after: Decimal  # the order's refunded_money after the step
    refund_id: str | None = None

    @property
    def complete(self) -> bool:
        """Nothing of the credit is left after this step."""
        return self.after >= 1

    def taken(self, total: int) -> int:
        """What of `total` (the quota, or a rebate) this step takes back."""
        return share(total, self.after) - share(total, self.before)


class UnreadableRefund(ValueError):
    """A refund whose amount cannot be known: it must not be guessed."""


def refund_step(
    paid: Decimal,
    refunded: Decimal,
    counted_ids: frozenset[str],
    refund: Refund,
    key_of: Callable[[Decimal], str],
) -> Step | None:
    """The step a refund notification makes, or None when it changes nothing (repeated,
    stale, or nothing left). `key_of` names a refunded total (its minor units: only the
    caller knows the provider's unit)."""
    before = ratio(refunded, paid)
    if before >= 1:
        return None
    if refund.refund_id is not None and refund.refund_id in counted_ids:
        return None
    if refund.full:
        total = paid
    elif refund.amount is None:
        raise UnreadableRefund("a partial refund without an amount")
    elif refund.amount <= 0:
        return None
    elif refund.cumulative:
        total = refund.amount
    else:
        total = refunded + refund.amount
    total = min(total, paid)
    if total <= refunded:
        return None  # a stale or repeated cumulative total
    return Step(
        key=key_of(total),
        before=before,
        after=ratio(total, paid),
        refunded_after=total,
        refund_id=refund.refund_id,
    )


def dispute_step(paid: Decimal, refunded: Decimal) -> Step | None:
    """A chargeback takes back everything that remains; None when nothing does."""
    before = ratio(refunded, paid)
    if before >= 1:
        return None
    return Step(key=DISPUTE_STEP, before=before, after=Fraction(1), refunded_after=refunded)
