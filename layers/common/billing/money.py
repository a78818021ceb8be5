"""Money: Decimal amounts in a currency's major unit, and how each provider counts its minor units.

A currency's minor unit is not one number: it depends on who is asked. ISO 4217 says IDR has two
decimals; Waffo takes whole rupiah ("orderAmount": "150000"); Stripe takes IDR in sen (two
decimals, 15000000 for 150000 IDR). Stripe also sends ISK as two-decimal amounts that must end
in 00 (whole krónur only), and three-decimal currencies with a last digit of 0. So every amount
that crosses a provider's wire, and every price charged through one, goes through `unit(currency,
provider)`:

- `decimals`: the finest amount the provider can charge; a price is rounded half-up to it.
- `exponent`: the power of ten of the provider's integer ("minor unit") amounts.

`decimals <= exponent` always. Without a provider, the ISO 4217 unit applies.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import NamedTuple

# ISO 4217 currencies with no minor unit, and those with three decimals.
ISO_ZERO_DECIMAL = frozenset(
    {
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "ISK",
        "JPY",
        "KMF",
        "KRW",
        "PYG",
        "RWF",
        "UGX",
        "UYI",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    }
)
ISO_THREE_DECIMAL = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})

# Stripe (docs.stripe.com/currencies): its zero-decimal list; three-decimal currencies take
# three-decimal amounts whose last digit is 0 (so two decimals can be charged); ISK is
# "effectively zero-decimal" but still sent as a two-decimal amount ending in 00. HUF and TWD
# are zero-decimal for payouts only: charges are two-decimal, like IDR.
STRIPE_ZERO_DECIMAL = frozenset(
    {
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    }
)
STRIPE_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})
STRIPE_WHOLE_IN_TWO_DECIMALS = frozenset({"ISK"})
# Waffo (PROVIDERS.md): orderAmount without decimals for IDR, JPY, KRW, VND, and the other
# ISO zero-decimal currencies.
WAFFO_ZERO_DECIMAL = ISO_ZERO_DECIMAL | {"IDR"}


def _codes(text: str) -> frozenset[str]:
    return frozenset(text.split())


# What each provider can charge in. Stripe: its presentment currencies (docs.stripe.com/
# currencies); EPay: yuan only (`money` is yuan by protocol); Creem: the currencies its
# products can be priced in; Waffo: the currencies of its acquiring network as its merchant
# documentation lists them. A settings document pairing a provider with anything else is
# refused at load (billing.settings).
PROVIDER_CURRENCIES: dict[str, frozenset[str]] = {
    "stripe": _codes(
        """
        USD AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL
        BSD BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CVE CZK DJF DKK DOP DZD EGP ETB EUR FJD
        FKP GBP GEL GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR ISK JMD JOD JPY KES KGS
        KHR KMF KRW KWD KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MUR MVR MWK
        MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB
        RWF SAR SBD SCR SEK SGD SHP SLE SOS SRD SZL THB TJS TND TOP TRY TTD TWD TZS UAH UGX
        UYU UZS VND VUV WST XAF XCD XOF XPF YER ZAR ZMW
        """
    ),
    "epay": frozenset({"CNY"}),
    "creem": frozenset({"USD", "EUR"}),
    "waffo": _codes("USD EUR GBP AUD CAD SGD HKD TWD JPY KRW CNY IDR PHP THB MYR VND INR BRL MXN"),
}


class Unit(NamedTuple):
    decimals: int  # the finest chargeable amount: 10**-decimals
    exponent: int  # wire amounts are integers of 10**-exponent


def iso_exponent(currency: str) -> int:
    code = currency.upper()
    if code in ISO_ZERO_DECIMAL:
        return 0
    if code in ISO_THREE_DECIMAL:
        return 3
    return 2


def unit(currency: str, provider: str | None = None) -> Unit:
    """How `provider` counts amounts of `currency` (ISO 4217 without a provider)."""
    code = currency.upper()
    if provider == "stripe":
        if code in STRIPE_ZERO_DECIMAL:
            return Unit(0, 0)
        if code in STRIPE_THREE_DECIMAL:
            return Unit(2, 3)
        if code in STRIPE_WHOLE_IN_TWO_DECIMALS:
            return Unit(0, 2)
        return Unit(2, 2)
    if provider == "waffo" and code in WAFFO_ZERO_DECIMAL:
        return Unit(0, 0)
    exponent = iso_exponent(code)
    return Unit(exponent, exponent)


def supports(provider: str, currency: str) -> bool:
    return currency.upper() in PROVIDER_CURRENCIES.get(provider, frozenset())


def exponent(currency: str, provider: str | None = None) -> int:
    """The power of ten of the provider's integer amounts of `currency`."""
    return unit(currency, provider).exponent


def quantize(amount: Decimal, currency: str, provider: str | None = None) -> Decimal:
    """Round half-up to the finest amount `provider` can charge in `currency`."""
    decimals = unit(currency, provider).decimals
    return amount.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


def to_minor(amount: Decimal, currency: str, provider: str | None = None) -> int:
    """The provider's integer amount for exactly `amount`; ValueError if it has none (an
    amount finer than the provider's unit is never rounded silently)."""
    scaled = amount.scaleb(unit(currency, provider).exponent)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency} is finer than {provider or 'ISO'}'s minor unit")
    return int(scaled)


def from_minor(minor: int, currency: str, provider: str | None = None) -> Decimal:
    """A provider's integer amount in major units, exactly (never rounded: a paid amount
    that is off by a fraction must not compare equal to the price)."""
    return Decimal(minor).scaleb(-unit(currency, provider).exponent)


def parse(text: str | int | Decimal, currency: str) -> Decimal:
    """A provider's amount as a Decimal in major units; ValueError if it is not a number."""
    try:
        value = Decimal(str(text))
    except InvalidOperation as exc:
        raise ValueError(f"not an amount: {text!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not an amount: {text!r}")
    return value


def format_amount(amount: Decimal, currency: str, provider: str | None = None) -> str:
    """The decimal string of API.md ("7.30"; "1000" for JPY; "150000" for IDR on Waffo)."""
    return str(quantize(amount, currency, provider))


def format_exact(amount: Decimal, currency: str, provider: str | None = None) -> str:
    """`amount` with the provider's decimals when that is exact, else with all of its digits
    (a refunded total is recorded as it was reported, never rounded)."""
    rounded = quantize(amount, currency, provider)
    return str(rounded) if rounded == amount else str(amount)
