"""The latency our LiteLLM callback adds to a proxied completion: reserve before, settle after.

Starts its own local stack (schedules off) and two LiteLLM proxies from .venv-litellm on the
same mock model: one plain, one with quota_meter's callback. Sends completions one at a time
with the official openai client, alternating between the two proxies so that both see the
same machine load, and reports p50/p95 of each and their difference (what a client waits for
more). The metered proxy runs the installed callback wrapped by
bench/support/litellm_timed_callback.py, which times its two hooks in the proxy: the reserve
(`async_pre_call_hook`, before the upstream call: on the client's path) and the settle
(`async_log_success_event`, after the response: LiteLLM runs it off the client's path, but it
is the proxy's work for that request all the same). Each request's reserve and settle are
paired by request id; their sum is the callback's cost per request. Each metered request's
settle ends before the next request is sent, so no figure carries another request's work.

    .venv/bin/python bench/litellm_latency.py      (BENCH_REQUESTS=100, BENCH_WARMUP=10)
Writes bench/results/litellm_latency.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(ROOT),
    str(ROOT / "layers" / "common"),
    str(ROOT / "clients" / "python" / "src"),
]

import openai  # noqa: E402

from tests.client.helpers import account, funded_user, wait_until  # noqa: E402
from tests.client.litellm_proxy import MASTER_KEY, LiteLLMProxy, mock_model  # noqa: E402
from tests.support.stack import ARTIFACTS, LocalStack  # noqa: E402

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "100"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "10"))
RESULTS = ROOT / "bench" / "results" / "litellm_latency.json"
TIMED_CALLBACK = ROOT / "bench" / "support" / "litellm_timed_callback.py"
TIMINGS = ARTIFACTS / f"litellm-timings-{os.getpid()}.jsonl"
MODELS = [mock_model("gpt-4o", "Hello from the mock model, in a few words.")]
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello in a few words."}]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def figures(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 0.50) * 1000, 1),
        "p95_ms": round(percentile(samples, 0.95) * 1000, 1),
        "mean_ms": round(statistics.fmean(samples) * 1000, 1),
    }


def timed(client: openai.OpenAI, user: str) -> float:
    started = time.perf_counter()
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, user=user, max_tokens=32)
    return time.perf_counter() - started


def hook_timings() -> dict[str, dict[str, float]]:
    """{request id: {"reserve": s, "settle": s}} from the timed callback's lines so far."""
    paired: dict[str, dict[str, float]] = {}
    if TIMINGS.exists():
        for line in TIMINGS.read_text().splitlines():
            timing = json.loads(line)
            paired.setdefault(str(timing["request_id"]), {})[timing["hook"]] = timing["seconds"]
    return paired


def complete_timings() -> list[dict[str, float]]:
    """The requests with both hooks timed, in the order of their reserves."""
    return [t for t in hook_timings().values() if "reserve" in t and "settle" in t]


def main() -> int:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    TIMINGS.unlink(missing_ok=True)
    with LocalStack("bench-litellm") as stack:
        stack.start(env={"LOCAL_SCHEDULES": "0"})
        user = funded_user(stack, 100_000_000, prefix="bench-litellm")
        with (
            LiteLLMProxy("bench-plain", stack, MODELS, metered=False) as plain,
            LiteLLMProxy(
                "bench-metered",
                stack,
                MODELS,
                callback_file=TIMED_CALLBACK,
                env={"QUOTA_METER_TIMINGS": str(TIMINGS)},
            ) as metered,
        ):
            clients = {
                name: openai.OpenAI(base_url=proxy.base_url, api_key=MASTER_KEY, max_retries=0)
                for name, proxy in (("plain", plain), ("metered", metered))
            }
            for _ in range(WARMUP):
                for client in clients.values():
                    timed(client, user)
            samples: dict[str, list[float]] = {"plain": [], "metered": []}
            for _ in range(REQUESTS):
                for name, client in clients.items():
                    samples[name].append(timed(client, user))
                    if name == "metered":
                        # Its settle runs after the response: let it end before the next
                        # request, so that neither proxy's figure carries the other's work.
                        settled = len(hook_timings())
                        wait_until(
                            lambda n=settled: len(complete_timings()) >= n,
                            message="the settle of the last request",
                        )
            # The last settles land after their responses.
            wait_until(
                lambda: account(stack, user)["request_count"] == REQUESTS + WARMUP,
                message="every metered request settled",
            )
            charged = account(stack, user)["request_count"]
            # A settle's timing is written when its hook returns, just after the record.
            wait_until(
                lambda: len(complete_timings()) == REQUESTS + WARMUP,
                message="every request's two hooks timed",
            )
    # The warm-up requests' hooks come first in the file: keep the measured ones only.
    timings = complete_timings()
    measured = timings[-REQUESTS:]
    reserve = [t["reserve"] for t in measured]
    settle = [t["settle"] for t in measured]
    without, with_callback = figures(samples["plain"]), figures(samples["metered"])
    result = {
        "requests": REQUESTS,
        "warmup": WARMUP,
        "without_callback": without,
        "with_callback": with_callback,
        "added_ms": {
            "p50": round(with_callback["p50_ms"] - without["p50_ms"], 1),
            "p95": round(with_callback["p95_ms"] - without["p95_ms"], 1),
        },
        "callback_hooks": {
            "reserve": figures(reserve),
            "settle": figures(settle),
            "reserve_plus_settle": figures([r + s for r, s in zip(reserve, settle, strict=True)]),
        },
        "timed_requests": len(measured),
        "settled_requests": charged,
        "expected_settled": REQUESTS + WARMUP,
        "cpus": os.cpu_count(),
        "note": (
            "sequential completions of a LiteLLM mock model, alternating between a plain and a "
            "metered proxy; the metered one reserves (one Invoke) before the upstream call and "
            "settles (one Invoke) after the response, before the next request is sent; the "
            "hooks are timed inside the proxy"
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = charged == REQUESTS + WARMUP and len(measured) == REQUESTS
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
