"""The redemption domain on the embedded tables: failure windows over time, expiry, disable.

What needs a moving clock is tested here (the clock is the domain's, patched); everything
else about redemption is tested through HTTP in tests/integration/test_redemption.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from billing import clock
from billing.codes import admin as code_admin
from billing.codes import redemption
from billing.errors import InvalidRequest, NotFound, RedeemFailed, TooManyAttempts
from billing.models import Account, RateLimit, RedemptionCode
from billing.referral import signup

from tests.support.embedded_tables import ROOT, embedded_tables


@pytest.fixture(scope="module", autouse=True)
def tables() -> Iterator[None]:
    with embedded_tables() as aws, pytest.MonkeyPatch.context() as patch:
        secrets = aws.client("secretsmanager").list_secrets()["SecretList"]
        code_hash = next(s for s in secrets if "redemption codes" in s.get("Description", ""))
        patch.setenv("CODE_HASH_SECRET_ARN", code_hash["ARN"])
        patch.setenv("SETTINGS_FILE", str(ROOT / "settings" / "local.json"))
        yield


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.moment = clock.now()
        monkeypatch.setattr(clock, "now", lambda: self.moment)

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def new_user() -> str:
    user_id = f"u-{uuid.uuid4().hex[:12]}"
    signup.create_account(user_id, None)
    return user_id


def new_ip() -> str:
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


def fail(user: str, ip: str) -> None:
    with pytest.raises(RedeemFailed):
        redemption.redeem(user, "0000-0000-0000-0000-0000", ip)


def test_the_window_closes_and_a_new_one_opens(frozen: Clock) -> None:
    user, ip = new_user(), new_ip()
    for _ in range(10):
        fail(user, ip)
        frozen.advance(30)  # 10 failures over 5 minutes: all in one 10-minute window
    with pytest.raises(TooManyAttempts) as refused:
        redemption.redeem(user, "0000-0000-0000-0000-0000", ip)
    # The window opened at the first failure, 300 s ago.
    assert refused.value.headers == {"Retry-After": "300"}
    assert refused.value.retry_after == 300

    frozen.advance(299)
    with pytest.raises(TooManyAttempts) as still:
        redemption.redeem(user, "0000-0000-0000-0000-0000", ip)
    assert still.value.retry_after == 1

    frozen.advance(1)  # the window has closed: the next failure opens a new one
    fail(user, ip)
    window = RateLimit.get(f"redeem#user#{user}", consistent_read=True)
    assert int(window.hits) == 1
    assert int(window.expires_at) == int(frozen.moment.timestamp()) + 600


def test_a_refused_attempt_is_not_counted(frozen: Clock) -> None:
    user, ip = new_user(), new_ip()
    for _ in range(10):
        fail(user, ip)
    for _ in range(3):
        with pytest.raises(TooManyAttempts):
            redemption.redeem(user, "0000-0000-0000-0000-0000", ip)
    assert int(RateLimit.get(f"redeem#user#{user}", consistent_read=True).hits) == 10
    assert int(RateLimit.get(f"redeem#ip#{ip}", consistent_read=True).hits) == 10


def test_a_code_expires(frozen: Clock) -> None:
    expiry = clock.iso(frozen.moment + timedelta(hours=1))
    batch = code_admin.create_batch("admin-1", "expiring", 700, 1, 2, expiry)
    first, second = new_user(), new_user()
    assert redemption.redeem(first, batch.codes[0], new_ip()).quota == 700
    frozen.advance(3600)  # expires_at is exclusive: at that moment the code is expired
    with pytest.raises(RedeemFailed):
        redemption.redeem(second, batch.codes[0], new_ip())
    assert int(Account.get(second, consistent_read=True).quota) == 0


def test_expiry_is_stored_in_utc_and_must_be_in_the_future(frozen: Clock) -> None:
    batch = code_admin.create_batch("admin-1", "tz", 1, 1, 1, "2999-01-01T02:00:00+02:00")
    stored = [c for c in RedemptionCode.scan(consistent_read=True) if c.batch_id == batch.batch_id]
    assert [c.expires_at for c in stored] == ["2999-01-01T00:00:00.000000Z"]
    past = clock.iso(frozen.moment - timedelta(seconds=1))
    for bad in (past, "tomorrow", "2999-13-01T00:00:00Z"):
        with pytest.raises(InvalidRequest):
            code_admin.create_batch("admin-1", "bad", 1, 1, 1, bad)


def test_disable_is_idempotent_and_unknown_codes_are_not_found(frozen: Clock) -> None:
    batch = code_admin.create_batch("admin-1", "to disable", 5, 1)
    code_id = next(
        c.code_id for c in RedemptionCode.scan(consistent_read=True) if c.batch_id == batch.batch_id
    )
    first = code_admin.disable("admin-1", code_id)
    frozen.advance(10)
    again = code_admin.disable("admin-1", code_id)
    assert first["status"] == again["status"] == "disabled"
    assert again["disabled_at"] == first["disabled_at"]
    with pytest.raises(NotFound):
        code_admin.disable("admin-1", "0" * 64)
    with pytest.raises(NotFound):
        code_admin.disable("admin-1", "not-an-id")
