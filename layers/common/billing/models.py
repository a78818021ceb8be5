"""PynamoDB models of every table. Table names come from the environment the template sets.

Quota is an int (DynamoDB numbers are arbitrary precision, so no int32/float caps); money is a
decimal string. Times are ISO-8601 UTC strings, which sort as they read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

from pynamodb.attributes import (
    BooleanAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
)
from pynamodb.indexes import (
    AllProjection,
    GlobalSecondaryIndex,
    KeysOnlyProjection,
    LocalSecondaryIndex,
)
from pynamodb.models import Model

from billing import restore  # noqa: F401 - registers the SnapStart hooks (model connections)
from billing.facts import OrderStatus

_REGION = os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def _table(env: str) -> str:
    # A function without the variable has no permission on the table either; the empty name
    # makes any accidental use fail loudly.
    return os.environ.get(env, "")


class Account(Model):
    class Meta:
        table_name = _table("ACCOUNTS_TABLE")
        region = _REGION

    user_id = UnicodeAttribute(hash_key=True)
    quota = NumberAttribute(default=0)
    used_quota = NumberAttribute(default=0)
    request_count = NumberAttribute(default=0)
    held_quota = NumberAttribute(default=0)  # sum of open usage holds
    aff_code = UnicodeAttribute()
    aff_quota = NumberAttribute(default=0)
    aff_history_quota = NumberAttribute(default=0)
    aff_count = NumberAttribute(default=0)
    inviter_id = UnicodeAttribute(null=True)
    paid_orders = NumberAttribute(default=0)
    status = UnicodeAttribute(default="active")
    version = NumberAttribute(default=0)  # bumped by every ledger transaction
    created_at = UnicodeAttribute()
    updated_at = UnicodeAttribute(null=True)
    # Credit grants (billing.grants): grant_id -> compact fields; quota == sum of remaining.
    # Absent on accounts made before grants existed (tools/migrate_grants.py).
    grants = MapAttribute[str, Any](null=True)
    # Spend limits: scope -> {max_quota, period, updated_at}. On the account item because
    # metering reads it anyway (no extra read per charge); a change bumps `version`.
    limits = MapAttribute[str, Any](null=True)


class ReferralCode(Model):
    class Meta:
        table_name = _table("REFERRAL_CODES_TABLE")
        region = _REGION

    code = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute()
    created_at = UnicodeAttribute()


class OrdersByUser(GlobalSecondaryIndex["Order"]):
    class Meta:
        index_name = "by_user"
        projection = AllProjection()

    user_id = UnicodeAttribute(hash_key=True)
    created_at = UnicodeAttribute(range_key=True)


class OrdersByPayment(GlobalSecondaryIndex["Order"]):
    class Meta:
        index_name = "by_payment"
        projection = KeysOnlyProjection()

    provider_payment_id = UnicodeAttribute(hash_key=True)


class OpenOrders(GlobalSecondaryIndex["Order"]):
    """Sparse: only pending orders carry pending_shard, so the expiry sweeper reads just those."""

    class Meta:
        index_name = "open_orders"
        projection = KeysOnlyProjection()

    pending_shard = UnicodeAttribute(hash_key=True)
    expires_at = UnicodeAttribute(range_key=True)


class Order(Model):
    class Meta:
        table_name = _table("ORDERS_TABLE")
        region = _REGION

    order_id = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute()
    method = UnicodeAttribute()
    channel = UnicodeAttribute(null=True)
    product_id = UnicodeAttribute(null=True)
    amount = NumberAttribute()
    pay_money = UnicodeAttribute()  # decimal string, e.g. "7.30"
    currency = UnicodeAttribute()
    quota = NumberAttribute()
    status = UnicodeAttribute(default=OrderStatus.PENDING.value)
    pay_url = UnicodeAttribute(null=True)
    provider_payment_id = UnicodeAttribute(null=True)
    provider_session_id = UnicodeAttribute(null=True)
    failure_reason = UnicodeAttribute(null=True)
    test_mode = BooleanAttribute(default=True)
    created_at = UnicodeAttribute()
    expires_at = UnicodeAttribute(null=True)  # created_at + limits.order_ttl_seconds
    pending_shard = UnicodeAttribute(null=True)  # set only while pending (open_orders index)
    paid_at = UnicodeAttribute(null=True)
    updated_at = UnicodeAttribute(null=True)
    # Refunds: the total money returned so far (decimal string; absent = none) and the
    # provider refund ids already counted in it (providers that report each refund apart).
    refunded_money = UnicodeAttribute(null=True)
    refund_ids = UnicodeSetAttribute(null=True)
    # Auto top-up: an off-session payment of a saved card (billing.autotopup); save_card: a
    # checkout that saves the card for those.
    auto = BooleanAttribute(null=True)
    save_card = BooleanAttribute(null=True)

    by_user = OrdersByUser()
    by_payment = OrdersByPayment()
    open_orders = OpenOrders()


class CodesByShard(GlobalSecondaryIndex["RedemptionCode"]):
    """The admin listing, newest first within each of the code shards (billing.codes.listing).

    Spread over shards so that the writes of a batch do not all land on one index partition,
    and keys only: a redemption (`uses`) or a disable (`status`) changes no projected
    attribute, so only the creation of a code writes to this index.
    """

    class Meta:
        index_name = "by_shard"
        projection = KeysOnlyProjection()

    list_shard = UnicodeAttribute(hash_key=True)
    list_sort = UnicodeAttribute(range_key=True)


class RedemptionCode(Model):
    """A code is stored under code_id = keyed HMAC of its normalised plaintext."""

    class Meta:
        table_name = _table("REDEMPTION_CODES_TABLE")
        region = _REGION

    code_id = UnicodeAttribute(hash_key=True)
    list_shard = UnicodeAttribute()  # "codes#<n>", from the code_id
    list_sort = UnicodeAttribute()  # "<created_at>#<code_id>": unique and time-ordered
    name = UnicodeAttribute()
    quota = NumberAttribute()
    max_uses = NumberAttribute(default=1)
    uses = NumberAttribute(default=0)
    status = UnicodeAttribute(default="active")  # active | disabled
    expires_at = UnicodeAttribute(null=True)
    batch_id = UnicodeAttribute()
    created_by = UnicodeAttribute()
    created_at = UnicodeAttribute()
    disabled_at = UnicodeAttribute(null=True)
    # A promo code's grant terms (billing.grant_terms): {"priority"?, "expires_in_days"? |
    # "expires_at"?}; absent = a plain `code` grant (priority 50, no expiry).
    grant = MapAttribute[str, Any](null=True)

    by_shard = CodesByShard()


class LedgerBySeq(LocalSecondaryIndex["LedgerEntry"]):
    class Meta:
        index_name = "by_seq"
        projection = AllProjection()

    user_id = UnicodeAttribute(hash_key=True)
    seq = UnicodeAttribute(range_key=True)


class LedgerEntry(Model):
    """One quota change. entry_id is derived from the cause, so a cause applies once."""

    class Meta:
        table_name = _table("LEDGER_TABLE")
        region = _REGION

    user_id = UnicodeAttribute(hash_key=True)
    entry_id = UnicodeAttribute(range_key=True)
    seq = UnicodeAttribute()  # account version after the change + position: total order
    kind = UnicodeAttribute()
    balance = UnicodeAttribute()  # "quota" | "aff_quota"
    delta = NumberAttribute()
    balance_after = NumberAttribute()
    ref = UnicodeAttribute(default="")
    created_at = UnicodeAttribute()
    # grant_id -> delta, summing to delta, on every entry that moves quota.
    grants = MapAttribute[str, Any](null=True)

    by_seq = LedgerBySeq()


class UsageByUserShard(GlobalSecondaryIndex["UsageRecord"]):
    """A user's usage, newest first, spread over `usage.user_shards` partitions (`user_shard`
    = `<user_id>#<n>`, n from the request_id): created_at only grows, so one partition per
    user would cap an account near 1000 records a second. Readers merge the shards
    (billing.usage.history)."""

    class Meta:
        index_name = "by_user_shard"
        projection = AllProjection()

    user_shard = UnicodeAttribute(hash_key=True)
    created_at = UnicodeAttribute(range_key=True)


def usage_shard_number(request_id: str, shards: int) -> int:
    """The by_user_shard shard of a request: stable, so every write of a record keeps it."""
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) % shards


def usage_user_shard(user_id: str, request_id: str, shards: int) -> str:
    return f"{user_id}#{usage_shard_number(request_id, shards)}"


def usage_user_shards(user_id: str, shards: int) -> list[str]:
    """Every by_user_shard partition of a user."""
    return [f"{user_id}#{n}" for n in range(shards)]


class OpenHolds(GlobalSecondaryIndex["UsageRecord"]):
    """Sparse: only records with an open hold carry hold_shard."""

    class Meta:
        index_name = "open_holds"
        projection = KeysOnlyProjection()

    hold_shard = UnicodeAttribute(hash_key=True)
    hold_expires_at = UnicodeAttribute(range_key=True)


class UsageRecord(Model):
    """The usage log entry of one request_id (and its hold, while reserved)."""

    class Meta:
        table_name = _table("USAGE_TABLE")
        region = _REGION

    request_id = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute()
    # "<user_id>#<n>" (usage_user_shard): the by_user_shard index key. Absent on records
    # written before the index was sharded until tools/migrate_usage_shards.py backfills it.
    user_shard = UnicodeAttribute(null=True)
    model = UnicodeAttribute()
    group = UnicodeAttribute(null=True)
    key_id = UnicodeAttribute(null=True)  # the API key the gateway served, if it said
    prompt_tokens = NumberAttribute(default=0)
    completion_tokens = NumberAttribute(default=0)
    model_ratio = UnicodeAttribute(null=True)
    completion_ratio = UnicodeAttribute(null=True)
    group_ratio = UnicodeAttribute(null=True)
    model_price = UnicodeAttribute(null=True)
    quota = NumberAttribute(default=0)  # charged (or settled) quota
    hold_quota = NumberAttribute(default=0)
    status = UnicodeAttribute()  # charged | reserved | settled | released
    results = MapAttribute[str, Any](default=dict)  # action -> first result, for duplicates
    hold_shard = UnicodeAttribute(null=True)
    hold_expires_at = UnicodeAttribute(null=True)
    # The spend-limit counters (`<scope>#<window>`) this request's spend is counted in.
    limit_counters = ListAttribute[UnicodeAttribute](of=UnicodeAttribute, null=True)
    created_at = UnicodeAttribute()
    updated_at = UnicodeAttribute(null=True)

    by_user_shard = UsageByUserShard()
    open_holds = OpenHolds()


def usage_of_user(user_id: str, shards: int, **query: Any) -> Iterator[UsageRecord]:
    """All of a user's usage records through the index, shard by shard (in no overall
    order); `query`: further Query arguments (attributes_to_get, ...)."""
    for key in usage_user_shards(user_id, shards):
        yield from UsageRecord.by_user_shard.query(key, **query)


def limit_window_key(user_id: str, counter: str) -> str:
    """The partition of one spend-limit window: `<user_id>#<scope>#<window>`."""
    return f"{user_id}#{counter}"


class LimitCounter(Model):
    """The spend of one spend-limit window, on a partition of its own (limit_window_key):
    every charge under a limit updates each of its windows, so a user's windows on one
    partition would add up their write units there (bench/capacity.py)."""

    class Meta:
        table_name = _table("LIMIT_WINDOWS_TABLE")
        region = _REGION

    window_key = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute(null=True)  # for people reading the table; keys carry both
    counter = UnicodeAttribute(null=True)  # `<scope>#<window>`
    spent = NumberAttribute(default=0)
    expires_at = NumberAttribute(null=True)  # epoch seconds; DynamoDB TTL after the window


class RateLimit(Model):
    class Meta:
        table_name = _table("RATE_LIMITS_TABLE")
        region = _REGION

    key = UnicodeAttribute(hash_key=True)
    hits = NumberAttribute(default=0)
    expires_at = NumberAttribute()  # epoch seconds; DynamoDB TTL


class AuditRecord(Model):
    class Meta:
        table_name = _table("AUDIT_TABLE")
        region = _REGION

    day = UnicodeAttribute(hash_key=True)
    entry = UnicodeAttribute(range_key=True)  # "<iso time>#<uuid>"
    actor = UnicodeAttribute()
    action = UnicodeAttribute()
    target = UnicodeAttribute(default="")
    detail = MapAttribute[str, Any](default=dict)
    created_at = UnicodeAttribute()


# ---------------------------------------------------------------- usage rollups (usage insight)
# One table, two kinds of item: the rollup of one (day, model, key) under the user's partition
# (sort key `<day>#<model>#<key>`, so a day range is one Query) and the marker of each usage
# record already counted (`r#<request_id>`, under its own partition
# `m#<user_id>#<request_id>`), written in the same transaction as the rollup's ADD so a
# replayed stream record is counted once.


class UsageRollup(Model):
    class Meta:
        table_name = _table("USAGE_ROLLUPS_TABLE")
        region = _REGION

    user_id = UnicodeAttribute(hash_key=True)
    bucket = UnicodeAttribute(range_key=True)  # "<day>#<model>#<key>", components escaped
    day = UnicodeAttribute()
    model = UnicodeAttribute()
    key_id = UnicodeAttribute(null=True)  # None: usage metered without a key
    quota = NumberAttribute(default=0)
    requests = NumberAttribute(default=0)
    prompt_tokens = NumberAttribute(default=0)
    completion_tokens = NumberAttribute(default=0)
    updated_at = UnicodeAttribute(null=True)


class RollupMarker(Model):
    class Meta:
        table_name = _table("USAGE_ROLLUPS_TABLE")
        region = _REGION

    # "m#<user_id>#<request_id>" (billing.usage.rollups.marker_partition): a partition per
    # request, so a hot account's markers do not land on its rollups' partition. Markers
    # written before were under the user_id; they expire with their TTL.
    user_id = UnicodeAttribute(hash_key=True)
    bucket = UnicodeAttribute(range_key=True)  # "r#<request_id>"
    rollup = UnicodeAttribute()  # the bucket it was counted in
    expires_at = NumberAttribute()  # epoch seconds; DynamoDB TTL, past the stream's retention


class GrantsByCreated(LocalSecondaryIndex["GrantRecord"]):
    class Meta:
        index_name = "by_created"
        projection = AllProjection()

    user_id = UnicodeAttribute(hash_key=True)
    created_key = UnicodeAttribute(range_key=True)


class ExpiringGrants(GlobalSecondaryIndex["GrantRecord"]):
    """Sparse and sharded: only grants with an expiry not yet swept carry expiry_shard."""

    class Meta:
        index_name = "expiring"
        projection = KeysOnlyProjection()

    expiry_shard = UnicodeAttribute(hash_key=True)
    due_at = NumberAttribute(range_key=True)


class GrantRecord(Model):
    """A credit grant's immutable history (its remainder lives on the account item), written
    in the same transaction as the credit that created it."""

    class Meta:
        table_name = _table("GRANTS_TABLE")
        region = _REGION

    user_id = UnicodeAttribute(hash_key=True)
    grant_id = UnicodeAttribute(range_key=True)
    created_key = UnicodeAttribute()  # "<created_at>#<grant_id>": newest first
    source = UnicodeAttribute()
    amount = NumberAttribute()
    priority = NumberAttribute()
    expires_at = NumberAttribute(null=True)  # epoch seconds
    ref = UnicodeAttribute()  # the credit's ledger entry id ("migration" for a baseline)
    created_at = UnicodeAttribute()
    merged_into = UnicodeAttribute(null=True)  # at the bound: the grant that holds it
    baseline = NumberAttribute(null=True)  # migrated quota
    # Sweeper bookkeeping (mutable): removed once the grant is written off.
    expiry_shard = UnicodeAttribute(null=True)
    due_at = NumberAttribute(null=True)
    # grant.expiring bookkeeping (billing.events.grant_notices): the expiry announced, and
    # while its put is pending, when it was claimed.
    notice_for = NumberAttribute(null=True)
    notice_claimed_at = NumberAttribute(null=True)

    by_created = GrantsByCreated()
    expiring = ExpiringGrants()
