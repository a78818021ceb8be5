"""Credit grants: the pure arithmetic of quota held as grants (no I/O).

An account's `quota` is the sum of its grants' `remaining`. Every credit creates a grant,
every debit draws from the active grants in the documented order (API.md "Credit grants"):
lower priority first, then the nearest expiry (none last), then non-paid before paid, then
oldest. An expired grant (expires_at <= now) is never drawn from, even before the sweeper
writes it off. The ledger (billing.ledger) builds its transaction from these results; each
function returns per-grant deltas that sum to the change, so a ledger entry can record them.

Negative balances (a settle above the balance, a reversal of spent quota) live on the one
non-expiring `overdraft` grant, whose remaining is negative; it is never drawn from, and the
next credits repay it first. So an expiring grant never holds a negative remainder.

The bound: at most MAX_GRANTS grants besides the overdraft on the account item. Past it a new
grant first makes room by dropping exhausted grants (kept in the history table), then merges
into a grant of the same source, priority and expiry, then into the same-source grant with the
nearest later expiry (it keeps its own, later, expiry: the user keeps the quota longer), then
into any grant with the nearest later expiry, and at last into the grant with the latest
expiry, which then takes the new grant's later expiry (never shortening anybody's quota).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

OVERDRAFT = "overdraft"
SOURCES = ("paid", "promo", "code", "referral", "bonus", "adjustment")
DEFAULT_PRIORITY = 50
MIN_PRIORITY, MAX_PRIORITY = 0, 100
# Grants on the account item besides the overdraft. A charge writes the account item in a
# transaction, 2 write units per started KB: at 8 grants (+ the overdraft and two spend
# limits) the item stays within 1 KB, so a charge costs what it did before grants; at 16 it
# crossed into the second KB, +2 units per charge (bench/capacity.py "grant_bound").
MAX_GRANTS = 8
EXPIRING_WINDOW_SECONDS = 7 * 86400  # GET /account expiring_quota
EXPIRING_NOTICE_SECONDS = 3 * 86400  # grant.expiring (alerts)

Grants = Mapping[str, "Grant"]
Deltas = dict[str, int]


class _TermsFields(NamedTuple):
    source: str
    priority: int = DEFAULT_PRIORITY
    expires_at: int | None = None


class Terms(_TermsFields):
    """What a credit's grant is: its source, priority and expiry (epoch seconds)."""

    __slots__ = ()

    def __new__(
        cls, source: str, priority: int = DEFAULT_PRIORITY, expires_at: int | None = None
    ) -> Terms:
        if source not in SOURCES:
            raise ValueError(f"unknown grant source {source!r}")
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise ValueError("priority is 0..100")
        return super().__new__(cls, source, priority, expires_at)


class Grant(NamedTuple):
    grant_id: str
    source: str
    amount: int  # what was credited (plus what merged into it)
    remaining: int
    priority: int = DEFAULT_PRIORITY
    expires_at: int | None = None  # epoch seconds; None = never
    created_at: int = 0  # epoch seconds
    baseline: int = 0  # quota it held when migrated (no ledger entry created that part)

    def expired(self, now: int) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def grant_id_for(entry_id: str) -> str:
    """The grant a credit creates, from its ledger entry id: a replay meets the same grant."""
    digest = hashlib.sha256(entry_id.encode()).digest()
    return "g" + base64.b32encode(digest).decode().lower()[:12]


def migration_grant_id(user_id: str) -> str:
    return grant_id_for(f"migration#{user_id}")


def baseline(user_id: str, quota: int, now: int) -> dict[str, Grant]:
    """The grants of an account made before grants existed: its quota as one `paid` grant
    without expiry (a negative quota as the overdraft). The migration records it as a baseline:
    no ledger entry, quota unchanged."""
    if quota > 0:
        grant_id = migration_grant_id(user_id)
        return {grant_id: Grant(grant_id, "paid", quota, quota, created_at=now, baseline=quota)}
    if quota < 0:
        return {OVERDRAFT: _overdraft(quota, now, baseline=quota)}
    return {}


def _overdraft(remaining: int, now: int, baseline: int = 0) -> Grant:
    return Grant(OVERDRAFT, "adjustment", 0, remaining, MAX_PRIORITY, None, now, baseline=baseline)


# ---------------------------------------------------------------- reading


def draw_key(grant: Grant) -> tuple[int, int, int, int, int, str]:
    """The documented draw order: priority, nearest expiry (none last), non-paid first,
    oldest first (and the id, so the order is total)."""
    return (
        grant.priority,
        0 if grant.expires_at is not None else 1,
        grant.expires_at or 0,
        1 if grant.source == "paid" else 0,
        grant.created_at,
        grant.grant_id,
    )


def drawable(grants: Grants, now: int) -> list[Grant]:
    """Grants a debit may take from, in draw order."""
    return sorted(
        (
            g
            for g in grants.values()
            if g.grant_id != OVERDRAFT and g.remaining > 0 and not g.expired(now)
        ),
        key=draw_key,
    )


def unspendable(grants: Grants, now: int) -> int:
    """The remainders of expired grants the sweeper has not written off yet."""
    return sum(g.remaining for g in grants.values() if g.expired(now) and g.remaining > 0)


def spendable(grants: Grants, now: int) -> int:
    """What a charge may use: quota minus the remainders of expired-but-unswept grants."""
    return sum(g.remaining for g in grants.values()) - unspendable(grants, now)


def active(grants: Grants, now: int) -> list[Grant]:
    """The grants GET /account shows: unexpired with something left, and the overdraft."""
    shown = [g for g in grants.values() if g.grant_id == OVERDRAFT and g.remaining]
    return shown + drawable(grants, now)


def expiring(grants: Grants, now: int, window: int = EXPIRING_WINDOW_SECONDS) -> int:
    """Quota that expires within `window` seconds from now."""
    return sum(
        g.remaining
        for g in drawable(grants, now)
        if g.expires_at is not None and g.expires_at < now + window
    )


def total(grants: Grants) -> int:
    return sum(g.remaining for g in grants.values())


# ---------------------------------------------------------------- changes


def apply_deltas(grants: Grants, deltas: Mapping[str, int], now: int) -> dict[str, Grant]:
    """The grants after `deltas`; an overdraft is created when needed and dropped at zero."""
    result = dict(grants)
    for grant_id, delta in deltas.items():
        if grant_id == OVERDRAFT and grant_id not in result:
            result[OVERDRAFT] = _overdraft(0, now)
        current = result[grant_id]
        result[grant_id] = current._replace(remaining=current.remaining + delta)
    overdraft = result.get(OVERDRAFT)
    if overdraft is not None and overdraft.remaining == 0 and overdraft.baseline == 0:
        del result[OVERDRAFT]
    return result


def draw(grants: Grants, amount: int, now: int, *, exclude: str | None = None) -> Deltas:
    """Per-grant deltas (negative) that take `amount` in draw order; what the active grants
    cannot cover goes to the overdraft (only settles and reversals may leave it there: the
    ledger's floor check refuses a charge that would)."""
    if amount < 0:
        raise ValueError("amount must not be negative")
    deltas: Deltas = {}
    left = amount
    for grant in drawable(grants, now):
        if left == 0:
            break
        if grant.grant_id == exclude:
            continue
        take = min(grant.remaining, left)
        deltas[grant.grant_id] = -take
        left -= take
    if left:
        deltas[OVERDRAFT] = deltas.get(OVERDRAFT, 0) - left
    return deltas


def reverse(grants: Grants, own_grant_id: str | None, amount: int, now: int) -> Deltas:
    """A refund's deltas: from its own order's grant first (unless expired), then the rest
    in draw order, then the overdraft."""
    if amount < 0:
        raise ValueError("amount must not be negative")
    deltas: Deltas = {}
    own = grants.get(own_grant_id) if own_grant_id else None
    left = amount
    if own is not None and own.grant_id != OVERDRAFT and own.remaining > 0 and not own.expired(now):
        take = min(own.remaining, left)
        if take:
            deltas[own.grant_id] = -take
            left -= take
    for grant_id, delta in draw(grants, left, now, exclude=own_grant_id).items():
        deltas[grant_id] = deltas.get(grant_id, 0) + delta
    return {grant_id: delta for grant_id, delta in deltas.items() if delta}


def debit(grants: Grants, amount: int, now: int, own_grant_id: str | None = None) -> Deltas:
    return reverse(grants, own_grant_id, amount, now) if own_grant_id else draw(grants, amount, now)


class Credited(NamedTuple):
    grants: dict[str, Grant]
    deltas: Deltas  # {"overdraft": +repaid, "<grant>": +rest}; sums to the amount
    merged_into: str | None  # the grant the new one merged into at the bound, if any
    dropped: tuple[str, ...]  # exhausted grants dropped to make room


def credit(grants: Grants, new: Grant, now: int, limit: int = MAX_GRANTS) -> Credited:
    """Add `new` (its remaining = its amount), first repaying an overdraft."""
    if new.amount <= 0 or new.remaining != new.amount:
        raise ValueError("a new grant holds its positive amount")
    if new.grant_id == OVERDRAFT or new.grant_id in grants:
        raise ValueError("the grant exists already")
    current = dict(grants)
    deltas: Deltas = {}
    overdraft = current.get(OVERDRAFT)
    rest = new.amount
    if overdraft is not None and overdraft.remaining < 0:
        repaid = min(rest, -overdraft.remaining)
        deltas[OVERDRAFT] = repaid
        rest -= repaid
        current = apply_deltas(current, {OVERDRAFT: repaid}, now)
    fresh = new._replace(remaining=rest)
    others = [g for g in current.values() if g.grant_id != OVERDRAFT]
    dropped: tuple[str, ...] = ()
    if len(others) >= limit:
        # (A migration baseline stays: reconciliation reads the baseline from it.)
        dropped = tuple(g.grant_id for g in others if g.remaining == 0 and not g.baseline)
        for grant_id in dropped:
            del current[grant_id]
        others = [g for g in others if g.grant_id not in dropped]
    if len(others) < limit or all(g.expired(now) for g in others):
        # (All of them expired and not swept yet: never merge into an expired grant; the
        # sweeper brings the count back under the bound.)
        current[fresh.grant_id] = fresh
        if rest:
            deltas[fresh.grant_id] = rest
        return Credited(current, deltas, None, dropped)
    target, expires_at = _merge_target(others, fresh, now)
    current[target.grant_id] = target._replace(
        amount=target.amount + fresh.amount,
        remaining=target.remaining + rest,
        expires_at=expires_at,
    )
    if rest:
        deltas[target.grant_id] = rest
    return Credited(current, deltas, target.grant_id, dropped)


def _later_or_equal(candidate: int | None, than: int | None) -> bool:
    if candidate is None:
        return True
    return than is not None and candidate >= than


def _expiry_distance(grant: Grant, new: Grant) -> tuple[int, int]:
    # Nearest later expiry first; "never" is the farthest.
    if grant.expires_at is None:
        return (1, 0)
    return (0, grant.expires_at - (new.expires_at or 0))


def _merge_target(others: list[Grant], new: Grant, now: int) -> tuple[Grant, int | None]:
    """The grant a new grant merges into at the bound, and the expiry it keeps."""
    live = [g for g in others if not g.expired(now)]
    for grant in live:
        if (grant.source, grant.priority, grant.expires_at) == (
            new.source,
            new.priority,
            new.expires_at,
        ):
            return grant, grant.expires_at
    later = [g for g in live if _later_or_equal(g.expires_at, new.expires_at)]
    same_source = [g for g in later if g.source == new.source]
    for candidates in (same_source, later):
        if candidates:
            target = min(candidates, key=lambda g: (_expiry_distance(g, new), draw_key(g)))
            return target, target.expires_at
    # The new grant outlives them all: the latest-expiring one takes its (later) expiry.
    target = max(live, key=lambda g: (g.expires_at or 0, g.grant_id))
    return target, new.expires_at


def expire(grants: Grants, grant_id: str) -> tuple[dict[str, Grant], int]:
    """Write off an expired grant: the grants without it and the delta (-remaining)."""
    current = dict(grants)
    grant = current.pop(grant_id)
    return current, -grant.remaining


# ---------------------------------------------------------------- compact encoding

_FIELDS = {"s": "source", "a": "amount", "r": "remaining", "p": "priority", "c": "created_at"}


def encode(grants: Grants) -> dict[str, dict[str, Any]]:
    """The account item's `grants` map: short attribute names, optional fields left out."""
    encoded: dict[str, dict[str, Any]] = {}
    for grant_id, grant in grants.items():
        item: dict[str, Any] = {short: getattr(grant, name) for short, name in _FIELDS.items()}
        if grant.expires_at is not None:
            item["e"] = grant.expires_at
        if grant.baseline:
            item["b"] = grant.baseline
        encoded[grant_id] = item
    return encoded


def decode(raw: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Grant]:
    grants: dict[str, Grant] = {}
    for grant_id, item in (raw or {}).items():
        expires = item.get("e")
        grants[str(grant_id)] = Grant(
            grant_id=str(grant_id),
            source=str(item["s"]),
            amount=int(item["a"]),
            remaining=int(item["r"]),
            priority=int(item.get("p", DEFAULT_PRIORITY)),
            expires_at=None if expires is None else int(expires),
            created_at=int(item.get("c", 0)),
            baseline=int(item.get("b", 0)),
        )
    return grants


# ---------------------------------------------------------------- reconciliation

SWEEP_GRACE_SECONDS = 3600  # the sweeper runs every 5 minutes; an hour late is a problem


class Moved(NamedTuple):
    """What reconciliation needs of one quota ledger entry."""

    entry_id: str
    delta: int
    grants: Mapping[str, int] | None


def problems(
    quota: int,
    grants: Grants | None,
    entries: list[Moved],
    now: int,
    grace: int = SWEEP_GRACE_SECONDS,
) -> list[tuple[str, str, Any, Any]]:
    """(check, message, expected, actual) for every way the grants disagree with the quota
    and the ledger: the remainders sum to quota; each grant's remaining is its migration
    baseline plus its deltas over the ledger; every entry that moves quota after the
    migration carries grants summing to its delta (those before it sum to the baselines);
    no expired grant keeps a positive remainder longer than the sweeper's grace."""
    found: list[tuple[str, str, Any, Any]] = []
    if grants is None:
        carrying = [e.entry_id for e in entries if e.grants]
        if carrying:
            found.append(
                ("grants", "entries carry grants but the account has none", [], carrying[:5])
            )
        return found
    if total(grants) != quota:
        found.append(
            ("grants_sum", "the grants' remainders do not sum to quota", quota, total(grants))
        )
    per_grant: dict[str, int] = {}
    before_grants = 0
    seen_grants = False
    for entry in entries:
        if not entry.delta and not entry.grants:
            continue
        if entry.grants is None:
            if seen_grants:
                found.append(
                    (
                        "grants_entry",
                        f"entry {entry.entry_id} moves quota without grants",
                        entry.delta,
                        None,
                    )
                )
            before_grants += entry.delta
            continue
        seen_grants = True
        moved = sum(int(v) for v in entry.grants.values())
        if moved != entry.delta:
            found.append(
                (
                    "grants_entry",
                    f"entry {entry.entry_id}: its grants do not sum to its delta",
                    entry.delta,
                    moved,
                )
            )
        for grant_id, delta in entry.grants.items():
            per_grant[grant_id] = per_grant.get(grant_id, 0) + int(delta)
    baselines = sum(g.baseline for g in grants.values())
    if before_grants != baselines:
        found.append(
            (
                "grants_baseline",
                "the entries before the migration do not sum to its baselines",
                baselines,
                before_grants,
            )
        )
    for grant_id in sorted(set(per_grant) | set(grants)):
        grant = grants.get(grant_id)
        remaining = grant.remaining if grant else 0
        expected = (grant.baseline if grant else 0) + per_grant.get(grant_id, 0)
        if remaining != expected:
            found.append(
                (
                    "grant_remaining",
                    f"grant {grant_id}: remaining is not its baseline plus its ledger deltas",
                    expected,
                    remaining,
                )
            )
        if grant and grant.grant_id != OVERDRAFT and grant.remaining < 0:
            found.append(
                (
                    "grant_remaining",
                    f"grant {grant_id} holds a negative remainder",
                    ">= 0",
                    grant.remaining,
                )
            )
        if grant and grant.expired(now - grace) and grant.remaining > 0:
            found.append(
                (
                    "grant_expiry",
                    f"grant {grant_id} expired and was not written off",
                    0,
                    grant.remaining,
                )
            )
    return found
