"""The latency our LiteLLM callback adds to a proxied completion (reserve before, settle after).

Starts its own local stack (schedules off) and two LiteLLM proxies from .venv-litellm on the
same mock model: one plain, one with quota_meter.litellm.callback. Sends completions one at a
time with the official openai client, alternating between the two proxies so that both see
the same machine load, and reports p50/p95 of each and the difference. The settle runs after
the response (LiteLLM's success callback), so what the client waits for is mostly the
reserve: one Invoke of the metering function on the local stack, also timed on its own
(`reserve_alone`, the quota_meter client from this process) to tell the backend's share
from the callback's.

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
from quota_meter import Meter  # noqa: E402

from tests.client.helpers import account, funded_user  # noqa: E402
from tests.client.litellm_proxy import MASTER_KEY, LiteLLMProxy, mock_model  # noqa: E402
from tests.support.stack import LocalStack  # noqa: E402

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "100"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "10"))
RESULTS = ROOT / "bench" / "results" / "litellm_latency.json"
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


def timed_reserve(meter: Meter, user: str) -> float:
    """What the callback waits for before the call: one reserve through the Invoke API."""
    started = time.perf_counter()
    result = meter.reserve(user_id=user, model="gpt-4o", prompt_tokens=20, completion_tokens=32)
    elapsed = time.perf_counter() - started
    meter.release(request_id=result.request_id, user_id=user, model="gpt-4o")
    return elapsed


def main() -> int:
    with LocalStack("bench-litellm") as stack:
        stack.start(env={"LOCAL_SCHEDULES": "0"})
        user = funded_user(stack, 100_000_000, prefix="bench-litellm")
        with (
            LiteLLMProxy("bench-plain", stack, MODELS, metered=False) as plain,
            LiteLLMProxy("bench-metered", stack, MODELS) as metered,
        ):
            clients = {
                name: openai.OpenAI(base_url=proxy.base_url, api_key=MASTER_KEY, max_retries=0)
                for name, proxy in (("plain", plain), ("metered", metered))
            }
            for _ in range(WARMUP):
                for client in clients.values():
                    timed(client, user)
            meter = Meter(
                endpoint_url=stack.base_url,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            samples: dict[str, list[float]] = {"plain": [], "metered": [], "reserve": []}
            for _ in range(REQUESTS):
                for name, client in clients.items():
                    samples[name].append(timed(client, user))
                samples["reserve"].append(timed_reserve(meter, user))
            time.sleep(2)  # the last settles land after their responses
            charged = account(stack, user)["request_count"]
    without, with_callback = figures(samples["plain"]), figures(samples["metered"])
    result = {
        "requests": REQUESTS,
        "warmup": WARMUP,
        "without_callback": without,
        "with_callback": with_callback,
        "reserve_alone": figures(samples["reserve"]),
        "added_ms": {
            "p50": round(with_callback["p50_ms"] - without["p50_ms"], 1),
            "p95": round(with_callback["p95_ms"] - without["p95_ms"], 1),
        },
        "settled_requests": charged,
        "expected_settled": REQUESTS + WARMUP,
        "cpus": os.cpu_count(),
        "note": (
            "sequential completions of a LiteLLM mock model, alternating between a plain and a "
            "metered proxy; the metered one reserves (one Invoke) before the call and settles "
            "after the response"
        ),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if charged == REQUESTS + WARMUP else 1


if __name__ == "__main__":
    sys.exit(main())
