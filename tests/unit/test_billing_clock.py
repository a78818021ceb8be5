"""billing.clock: real time unless the local stack set an offset for the invocation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from billing import clock


def test_without_an_offset_the_clock_is_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(clock.OFFSET_VARIABLE, raising=False)
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 5


def test_the_offset_moves_billing_time_but_not_real_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(clock.OFFSET_VARIABLE, "86400.0")
    ahead = clock.now() - datetime.now(UTC)
    assert timedelta(seconds=86395) < ahead < timedelta(seconds=86405)
    assert abs((clock.real_now() - datetime.now(UTC)).total_seconds()) < 5
    assert clock.iso() > clock.iso(datetime.now(UTC) + timedelta(hours=23))


@pytest.mark.parametrize(
    "moment",
    [
        datetime(311, 9, 21, 0, 0, tzinfo=UTC),
        datetime(2026, 12, 2, 9, 5, 7, 123, tzinfo=UTC),
        datetime(2026, 12, 2, 10, 5, 7, tzinfo=UTC).astimezone(),  # any zone: written as UTC
    ],
)
def test_iso_is_fixed_width_utc_and_parses_back(moment: datetime) -> None:
    text = clock.iso(moment)
    assert len(text) == len("2026-12-02T09:05:07.000123Z") and text.endswith("Z")
    assert clock.parse_iso(text) == moment
