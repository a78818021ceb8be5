"""The meter client's own local stack: the real template with the schedules off, so that the
invocation counts of GET /_local/stats are this module's calls and nothing else's (the
session stack's hold sweeper runs every minute). Reconciled at the end like the session's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from quota_meter import Meter, RetryPolicy

from tests.support.reconcile import assert_reconciled
from tests.support.stack import LocalStack

FAST_RETRIES = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture(scope="session")
def client_stack() -> Iterator[LocalStack]:
    local = LocalStack("meter-client")
    local.start(env={"LOCAL_SCHEDULES": "0"})
    try:
        yield local
        assert_reconciled(local)
    finally:
        local.stop()


def make_meter(endpoint_url: str, **kwargs: Any) -> Meter:
    kwargs.setdefault("retry", FAST_RETRIES)
    return Meter(
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        **kwargs,
    )


@pytest.fixture
def meter(client_stack: LocalStack) -> Meter:
    return make_meter(client_stack.base_url)


@pytest.fixture
def meter_for(client_stack: LocalStack) -> Callable[..., Meter]:
    """A Meter with other settings (endpoint, retries, queue) against the client stack."""

    def build(endpoint_url: str | None = None, **kwargs: Any) -> Meter:
        return make_meter(endpoint_url or client_stack.base_url, **kwargs)

    return build
