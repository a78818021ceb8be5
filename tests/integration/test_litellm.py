"""A real LiteLLM proxy (litellm[proxy] pinned in clients/python/requirements-litellm.txt, in
.venv-litellm) with our callback, metering against the session's local stack, driven by the
official `openai` client. Its models are LiteLLM mock responses: nothing leaves the machine.

Prices come from settings/local.json through API.md's formula (tests/client/helpers.price)
over the token counts LiteLLM reports. `per-call` is mapped (QUOTA_METER_MODEL_MAP) to the
fixed-price model `dall-e-3` (0.04 x 500000 = 20000 quota a call), so that a hold costs
exactly what its settle bills, whatever the tokens: a user with 12 x 20000 can be served 12
calls, in any order of holds and settles.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.client.helpers import (
    LossyInvokeApi,
    account,
    funded_user,
    listing,
    new_user,
    price,
    usage_entries,
    wait_until,
)
from tests.client.litellm_proxy import MASTER_KEY, LiteLLMProxy, mock_model
from tests.client.slow_upstream import SlowUpstream
from tests.support.stack import LocalStack

REPLY = "Hello from the mock model, in a few words."
PER_CALL = price("dall-e-3", 0, 0)
MODELS = [
    mock_model("gpt-4o", REPLY),
    mock_model("broken", "litellm.InternalServerError"),
    mock_model("per-call", "Priced per call."),
]
MODEL_MAP = {"broken": "gpt-4o", "per-call": "dall-e-3", "slow": "gpt-4o"}
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello in a few words."}]
# The user_id LiteLLM gives its master key (LITELLM_PROXY_ADMIN_NAME): the callback bills it
# when a request names no `user`.
KEY_USER_ID = "default_user_id"
DEFAULT_MAX_TOKENS = 4096  # QUOTA_METER_DEFAULT_MAX_TOKENS when unset (gateway_settings)


@pytest.fixture(scope="module")
def upstream() -> Iterator[SlowUpstream]:
    with SlowUpstream(chunks=300, interval=0.1) as running:
        yield running


@pytest.fixture(scope="module")
def relay(stack: LocalStack) -> Iterator[LossyInvokeApi]:
    """The callback reaches the Invoke API through this relay, which can throttle it."""
    with LossyInvokeApi(stack.base_url) as running:
        yield running


@pytest.fixture(scope="module")
def proxy(
    stack: LocalStack, upstream: SlowUpstream, relay: LossyInvokeApi
) -> Iterator[LiteLLMProxy]:
    # `slow` streams from a local upstream, one chunk every 0.1 s (for a client that leaves).
    slow = {
        "model_name": "slow",
        "litellm_params": {
            "model": "openai/gpt-4o",
            "api_key": "unused",
            "api_base": upstream.base_url,
        },
    }
    with LiteLLMProxy(
        "metered", stack, [*MODELS, slow], model_map=MODEL_MAP, endpoint_url=relay.url
    ) as running:
        yield running


@pytest.fixture
def client(proxy: LiteLLMProxy) -> openai.OpenAI:
    # No retries: each request is one proxied call, so the counts below are exact.
    return openai.OpenAI(base_url=proxy.base_url, api_key=MASTER_KEY, max_retries=0, timeout=60)


def usage_records(stack: LocalStack, user: str) -> list[dict[str, Any]]:
    return listing(stack, user, "/usage")


def settled_records(stack: LocalStack, user: str, count: int) -> list[dict[str, Any]]:
    """Wait until the user has `count` records, none of them still open; return them."""

    def done() -> list[dict[str, Any]] | None:
        records = usage_records(stack, user)
        if len(records) == count and all(r["status"] != "reserved" for r in records):
            return records
        return None

    records: list[dict[str, Any]] = wait_until(done, message=f"{count} closed usage record(s)")
    return records


def key_user(stack: LocalStack, quota: int) -> str:
    """The user LiteLLM puts on the master key (its `user_id` metadata), funded once."""
    user = KEY_USER_ID
    created = stack.request("POST", "/account", token=stack.token(user), json={})
    assert created.status_code == 201, created.text  # only one test bills this user
    adjusted = stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=stack.token("litellm-admin", admin=True),
        json={"delta": quota, "reason": "litellm test"},
    )
    assert adjusted.status_code == 200, adjusted.text
    return user


@pytest.mark.parametrize(
    ("max_tokens", "named_user"),
    [
        pytest.param(64, True, id="max-tokens-and-user-from-the-request"),
        # No `user` in the request: the key's user_id; no max_tokens: the default is held.
        pytest.param(None, False, id="default-max-tokens-and-the-key-s-user"),
    ],
)
def test_a_completion_debits_exactly_the_price_of_its_usage(
    stack: LocalStack, client: openai.OpenAI, max_tokens: int | None, named_user: bool
) -> None:
    user = funded_user(stack, 100_000, prefix="litellm") if named_user else key_user(stack, 100_000)
    extra: dict[str, Any] = {"user": user} if named_user else {}
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens
    response = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, **extra)
    assert response.choices[0].message.content == REPLY
    usage = response.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    expected = price("gpt-4o", usage.prompt_tokens, usage.completion_tokens)
    [record] = settled_records(stack, user, 1)
    assert record["status"] == "settled"
    assert (record["prompt_tokens"], record["completion_tokens"], record["quota"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
        expected,
    )
    # The hold was the prompt as LiteLLM's token counter saw it plus max_tokens (or the
    # callback's default, QUOTA_METER_DEFAULT_MAX_TOKENS, when the request names none).
    held = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    assert (
        price("gpt-4o", 0, held)
        <= record["hold_quota"]
        <= price("gpt-4o", 2 * usage.prompt_tokens, held)
    )
    state = account(stack, user)
    assert (state["quota"], state["used_quota"], state["request_count"]) == (
        100_000 - expected,
        expected,
        1,
    )
    assert [e["delta"] for e in usage_entries(stack, user)] == [-expected]


def test_a_streamed_completion_settles_once_with_the_final_usage(
    stack: LocalStack, client: openai.OpenAI
) -> None:
    user = funded_user(stack, 100_000, prefix="litellm")
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        user=user,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    [final] = [c.usage for c in chunks if c.usage is not None]
    assert chunks[-1].usage is final  # the usage comes in the last chunk
    expected = price("gpt-4o", final.prompt_tokens, final.completion_tokens)
    [record] = settled_records(stack, user, 1)
    assert (record["status"], record["quota"]) == ("settled", expected)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        final.prompt_tokens,
        final.completion_tokens,
    )
    assert account(stack, user)["quota"] == 100_000 - expected
    assert [e["delta"] for e in usage_entries(stack, user)] == [-expected]


def test_a_stream_that_asks_for_no_usage_is_settled_all_the_same(
    stack: LocalStack, client: openai.OpenAI
) -> None:
    user = funded_user(stack, 100_000, prefix="litellm")
    chunks = list(
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, user=user, stream=True)
    )
    assert all(c.usage is None for c in chunks)  # LiteLLM keeps its usage chunk to itself
    [record] = settled_records(stack, user, 1)
    assert record["status"] == "settled" and record["completion_tokens"] > 0
    expected = price("gpt-4o", record["prompt_tokens"], record["completion_tokens"])
    assert record["quota"] == expected
    assert account(stack, user)["quota"] == 100_000 - expected


@pytest.mark.parametrize(
    ("quota", "code"), [(0, "insufficient_quota"), (None, "account_not_found")]
)
def test_a_user_without_quota_gets_402_and_no_usage_record(
    stack: LocalStack, client: openai.OpenAI, quota: int | None, code: str
) -> None:
    user = new_user("litellm") if quota is None else funded_user(stack, quota, prefix="litellm")
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, user=user)
    assert refused.value.status_code == 402
    body = refused.value.response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    # Streaming requests are refused the same way, before any chunk.
    with pytest.raises(openai.APIStatusError) as refused_stream:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, user=user, stream=True)
    assert refused_stream.value.status_code == 402
    assert refused_stream.value.response.json()["error"]["code"] == code
    if quota is not None:
        assert usage_records(stack, user) == []
        assert account(stack, user)["quota"] == 0
        assert usage_entries(stack, user) == []


def test_a_request_above_the_user_s_spend_limit_gets_402_limit_exceeded(
    stack: LocalStack, client: openai.OpenAI
) -> None:
    """The user has the quota, but an account spend limit (API.md "Spend limits") of less
    than the hold: the reserve is refused with `limit_exceeded`, nothing is held or billed."""
    user = funded_user(stack, 1_000_000, prefix="litellm")
    token = stack.token(user)
    limit = price("gpt-4o", 0, 64) - 1  # under the hold of any request for 64 tokens
    put = stack.request(
        "PUT", "/limits/account", token=token, json={"max_quota": limit, "period": "day"}
    )
    assert put.status_code == 200, put.text
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, user=user, max_tokens=64, stream=stream
            )
        assert refused.value.status_code == 402
        error = refused.value.response.json()["error"]
        assert error["code"] == "limit_exceeded" and error["message"]
    assert usage_records(stack, user) == []  # no usage record, and no hold left open
    assert usage_entries(stack, user) == []
    state = account(stack, user)
    assert (state["quota"], state["used_quota"], state["request_count"]) == (1_000_000, 0, 0)
    [window] = stack.request("GET", "/limits", token=token).json()["limits"]
    assert (window["scope"], window["spent"]) == ("account", 0)
    # Without the limit the same user is served and billed: nothing was left holding quota.
    assert stack.request("DELETE", "/limits/account", token=token).status_code == 200
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, user=user, max_tokens=64)
    [record] = settled_records(stack, user, 1)
    assert record["status"] == "settled"
    assert account(stack, user)["quota"] == 1_000_000 - record["quota"]


def test_the_proxy_fails_closed_when_metering_is_unavailable(
    stack: LocalStack, client: openai.OpenAI, relay: LossyInvokeApi
) -> None:
    user = funded_user(stack, 100_000, prefix="litellm")
    relay.throttle(1000)  # every Invoke of the callback is throttled, retries included
    try:
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES, user=user)
    finally:
        relay.throttle(0)
    assert refused.value.status_code == 503
    assert refused.value.response.json()["error"]["code"] == "metering_unavailable"
    assert usage_records(stack, user) == []
    assert account(stack, user)["quota"] == 100_000
    # Metering back: the same user is served and billed again.
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, user=user)
    [record] = settled_records(stack, user, 1)
    assert record["status"] == "settled"


def test_a_call_whose_upstream_fails_releases_its_hold(
    stack: LocalStack, client: openai.OpenAI
) -> None:
    user = funded_user(stack, 100_000, prefix="litellm")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="broken", messages=MESSAGES, user=user)
    [record] = settled_records(stack, user, 1)
    assert record["status"] == "released"
    assert record["hold_quota"] > 0  # there was a hold, and it is gone
    state = account(stack, user)
    assert (state["quota"], state["used_quota"]) == (100_000, 0)
    assert usage_entries(stack, user) == []


def test_a_client_that_leaves_mid_stream_releases_its_hold(
    stack: LocalStack, proxy: LiteLLMProxy, upstream: SlowUpstream
) -> None:
    user = funded_user(stack, 1_000_000, prefix="litellm")
    body = json.dumps(
        {"model": "slow", "stream": True, "user": user, "messages": MESSAGES}
    ).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
        f"Authorization: Bearer {MASTER_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as conn:
        conn.sendall(request)
        first = conn.recv(4096)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        assert b"data:" in first or conn.recv(4096)
        # Leave without reading the rest: a hard close, as a client that went away.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    [record] = settled_records(stack, user, 1)
    assert record["status"] == "released"
    assert account(stack, user)["quota"] == 1_000_000
    assert usage_entries(stack, user) == []
    wait_until(lambda: upstream.disconnects >= 1, message="the proxy to leave the upstream too")


def test_twenty_concurrent_completions_for_a_user_who_can_afford_twelve(
    stack: LocalStack, client: openai.OpenAI
) -> None:
    user = funded_user(stack, 12 * PER_CALL, prefix="litellm")
    start = threading.Barrier(20, timeout=60)

    def call(_: int) -> int:
        start.wait()
        try:
            client.chat.completions.create(
                model="per-call", messages=MESSAGES, user=user, max_tokens=16
            )
        except openai.APIStatusError as exc:
            assert exc.response.json()["error"]["code"] == "insufficient_quota"
            return exc.status_code
        return 200

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = sorted(pool.map(call, range(20)))
    assert statuses == [200] * 12 + [402] * 8
    records = settled_records(stack, user, 12)
    assert [r["status"] for r in records] == ["settled"] * 12
    assert all(r["quota"] == PER_CALL for r in records)
    state = account(stack, user)
    assert (state["quota"], state["used_quota"], state["request_count"]) == (
        0,
        12 * PER_CALL,
        12,
    )
    assert len(usage_entries(stack, user)) == 12
