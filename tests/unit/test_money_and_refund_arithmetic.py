"""Pure money rules, table-driven: each provider's minor unit of a currency (Stripe takes IDR in
sen and ISK as whole krónur in two decimals, Waffo takes whole rupiah), and the proportional
reversal of refunds (floor(quota x R / P), all of it at R = P; repeated, stale and counted
refunds make no step)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from billing import money
from billing.payments import refunds
from billing.payments.refunds import Refund


@pytest.mark.parametrize(
    ("currency", "provider", "decimals", "exponent"),
    [
        ("USD", "stripe", 2, 2),
        ("IDR", "stripe", 2, 2),  # two-decimal on Stripe
        ("IDR", "waffo", 0, 0),  # whole rupiah on Waffo
        ("IDR", None, 2, 2),  # ISO 4217
        ("JPY", "stripe", 0, 0),
        ("JPY", "waffo", 0, 0),
        ("ISK", "stripe", 0, 2),  # whole krónur, sent as a two-decimal amount ending in 00
        ("HUF", "stripe", 2, 2),  # zero-decimal for payouts only
        ("TWD", "stripe", 2, 2),
        ("UGX", "stripe", 0, 0),
        ("KWD", "stripe", 2, 3),  # three decimals whose last is 0
        ("KWD", None, 3, 3),
        ("CNY", "epay", 2, 2),
        ("USD", "creem", 2, 2),
    ],
)
def test_units_per_provider(
    currency: str, provider: str | None, decimals: int, exponent: int
) -> None:
    assert money.unit(currency, provider) == money.Unit(decimals, exponent)


@pytest.mark.parametrize(
    ("amount", "currency", "provider", "minor", "text"),
    [
        ("150000", "IDR", "stripe", 15_000_000, "150000.00"),
        ("150000", "IDR", "waffo", 150_000, "150000"),
        ("5", "ISK", "stripe", 500, "5"),
        ("1234.5", "JPY", "stripe", None, "1235"),  # rounded half-up for a price
        ("5.12", "KWD", "stripe", 5120, "5.12"),
        ("10", "USD", "stripe", 1000, "10.00"),
    ],
)
def test_prices_and_wire_amounts(
    amount: str, currency: str, provider: str, minor: int | None, text: str
) -> None:
    price = money.quantize(Decimal(amount), currency, provider)
    assert money.format_amount(price, currency, provider) == text
    if minor is not None:
        assert money.to_minor(price, currency, provider) == minor
        assert money.from_minor(minor, currency, provider) == price


def test_wire_amounts_are_never_rounded() -> None:
    with pytest.raises(ValueError):
        money.to_minor(Decimal("10.001"), "USD", "stripe")
    assert money.from_minor(550, "ISK", "stripe") == Decimal("5.50")  # not a whole króna
    assert money.from_minor(550, "ISK", "stripe") != Decimal(5)


@pytest.mark.parametrize(
    ("provider", "currency", "takes"),
    [
        ("stripe", "IDR", True),
        ("stripe", "IRR", False),
        ("epay", "CNY", True),
        ("epay", "USD", False),
        ("creem", "EUR", True),
        ("creem", "JPY", False),
        ("waffo", "IDR", True),
        ("nobody", "USD", False),
    ],
)
def test_which_provider_takes_which_currency(provider: str, currency: str, takes: bool) -> None:
    assert money.supports(provider, currency) is takes


@pytest.mark.parametrize(
    ("total", "ratio", "share"),
    [
        (5_000_000, Fraction(1, 2), 2_500_000),
        (3_333_333, Fraction(333, 1000), 1_109_999),  # floor, never rounded up
        (3_333_333, Fraction(1), 3_333_333),
        (7, Fraction(1, 3), 2),
        (7, Fraction(0), 0),
        (10**30 + 1, Fraction(1, 2), 5 * 10**29),  # no float, no int64 cap
    ],
)
def test_share_is_floor_of_total_times_ratio(total: int, ratio: Fraction, share: int) -> None:
    assert refunds.share(total, ratio) == share


def key(total: Decimal) -> str:
    return str(int(total * 100))


P = Decimal("10.00")


@pytest.mark.parametrize(
    ("refunded", "counted", "refund", "expected"),
    [
        # cumulative totals (Stripe): a bigger one steps, an equal or smaller one does not
        ("0", (), Refund(Decimal("5.00"), True, False), ("500", "0", "1/2")),
        ("5.00", (), Refund(Decimal("10.00"), True, True), ("1000", "1/2", "1")),
        ("5.00", (), Refund(Decimal("5.00"), True, False), None),
        ("10.00", (), Refund(Decimal("5.00"), True, False), None),
        ("0", (), Refund(None, True, True), ("1000", "0", "1")),  # "refunded": all of it
        # one refund at a time (Creem, Waffo), each counted once by its id
        ("2.00", (), Refund(Decimal("3.00"), False, False, "r2"), ("500", "1/5", "1/2")),
        ("2.00", ("r2",), Refund(Decimal("3.00"), False, False, "r2"), None),
        ("8.00", (), Refund(Decimal("5.00"), False, False, "r3"), ("1000", "4/5", "1")),
        ("3.00", (), Refund(Decimal("2.00"), False, True, "r4"), ("1000", "3/10", "1")),
        ("0", (), Refund(Decimal("0"), False, False, "r5"), None),
    ],
)
def test_refund_steps(
    refunded: str,
    counted: tuple[str, ...],
    refund: Refund,
    expected: tuple[str, str, str] | None,
) -> None:
    step = refunds.refund_step(P, Decimal(refunded), frozenset(counted), refund, key)
    if expected is None:
        assert step is None
        return
    assert step is not None
    assert (step.key, step.before, step.after) == (
        expected[0],
        Fraction(expected[1]),
        Fraction(expected[2]),
    )
    assert step.complete is (step.after == 1)


def test_a_partial_refund_without_an_amount_is_unreadable() -> None:
    with pytest.raises(refunds.UnreadableRefund):
        refunds.refund_step(P, Decimal(0), frozenset(), Refund(None, False, False, "r"), key)


def test_steps_add_up_to_floor_of_the_total_whatever_the_path() -> None:
    quota = 3_333_333
    totals = [Decimal("0.01"), Decimal("3.33"), Decimal("3.34"), Decimal("9.99"), P]
    refunded, taken = Decimal(0), 0
    for total in totals:
        step = refunds.refund_step(P, refunded, frozenset(), Refund(total, True, total == P), key)
        assert step is not None
        taken += step.taken(quota)
        refunded = step.refunded_after
        assert taken == refunds.share(quota, Fraction(total) / Fraction(P))
    assert taken == quota


def test_a_dispute_takes_the_rest_once() -> None:
    step = refunds.dispute_step(P, Decimal("4.00"))
    assert step is not None and step.key == "dispute" and step.complete
    assert step.taken(5_000_000) == 3_000_000
    assert refunds.dispute_step(P, P) is None
