"""DynamoDB calls per redeem: successful, each kind of failure, and a refused (429) attempt.

Starts a local stack (tests/support/stack.py), warms the redeem workers (their first call
also reads settings and the code hash key), then for each sample resets GET /_local/stats,
sends one POST /redeem and reads the calls the embedded AWS saw. A sample during which any
other function ran (a schedule, a poller) is discarded and taken again.

Goal (issue 3): a successful redeem costs at most one read plus one TransactWriteItems.
Writes bench/results/redeem_calls.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

from billing.codes import plaintext as codes  # noqa: E402

from tests.support.stack import LocalStack  # noqa: E402

SAMPLES = int(os.environ.get("BENCH_SAMPLES", "10"))
READS = {"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"}
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
_addresses = iter(range(1, 60000))
Attempt = Callable[[], requests.Response]


class _FromAddress(HTTPAdapter):
    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def new_ip() -> str:
    """A loopback address of its own, so failures never reach the per-IP limit."""
    n = next(_addresses)
    return f"127.77.{n // 250 + 1}.{n % 250 + 1}"


class Bench:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.admin = stack.token("bench-admin", admin=True)
        self.last_batch = ""

    def user(self) -> str:
        token = self.stack.token(f"bench-{uuid.uuid4().hex[:10]}")
        self.stack.request("POST", "/account", token=token, json={}).raise_for_status()
        return token

    def codes(self, count: int, max_uses: int = 1) -> list[str]:
        response = self.stack.request(
            "POST",
            "/admin/redemption-codes",
            token=self.admin,
            json={"name": "bench", "quota": 1000, "count": count, "max_uses": max_uses},
        )
        response.raise_for_status()
        self.last_batch = str(response.json()["batch_id"])
        created: list[str] = response.json()["codes"]
        return created

    def disable_batch(self, batch_id: str) -> None:
        page = self.stack.request(
            "GET", "/admin/redemption-codes?limit=100", token=self.admin
        ).json()
        for item in page["items"]:
            if item["batch_id"] == batch_id:
                path = f"/admin/redemption-codes/{item['code_id']}"
                self.stack.request("DELETE", path, token=self.admin).raise_for_status()

    def redeem(self, token: str, code: str, ip: str | None = None) -> requests.Response:
        with requests.Session() as session:
            session.mount("http://", _FromAddress(ip or new_ip()))
            return session.post(
                f"{self.stack.base_url}/redeem",
                json={"code": code},
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )

    def measure(self, prepare: Callable[[], Attempt], status: int) -> dict[str, int]:
        """The AWS calls of one attempt (retaken if anything else ran meanwhile).

        prepare() sets up outside the measurement (new user, next code) and returns the attempt.
        """
        for _ in range(5):
            attempt = prepare()
            self.stack.reset_stats()
            response = attempt()
            stats = self.stack.stats()
            assert response.status_code == status, response.text
            others = {
                name: n
                for name, n in stats.get("invocations", {}).items()
                if n and name != "RedeemCodeFunction"
            }
            if not others and stats.get("invocations", {}).get("RedeemCodeFunction") == 1:
                return {str(k): int(v) for k, v in stats["calls"].items()}
        raise RuntimeError("other functions kept running during the samples")


def summarise(samples: list[dict[str, int]]) -> dict[str, Any]:
    operations = sorted({name for sample in samples for name in sample})
    per_call = {name: statistics.median(s.get(name, 0) for s in samples) for name in operations}
    dynamo = {
        k.removeprefix("dynamodb."): v for k, v in per_call.items() if k.startswith("dynamodb.")
    }
    return {
        "samples": len(samples),
        "calls_median": per_call,
        "reads": sum(v for k, v in dynamo.items() if k in READS),
        "writes": sum(v for k, v in dynamo.items() if k in WRITES),
        "dynamodb_calls": sum(dynamo.values()),
        "max_dynamodb_calls": max(
            sum(v for k, v in s.items() if k.startswith("dynamodb.")) for s in samples
        ),
    }


def main() -> dict[str, Any]:
    with LocalStack("bench-redeem") as stack:
        stack.start()
        bench = Bench(stack)
        # Warm every worker: a user without an account is refused after the reads, uncounted.
        stranger = stack.token("bench-no-account")
        for _ in range(12):
            bench.redeem(stranger, codes.format_code(codes.generate()))

        good = iter(bench.codes(SAMPLES * 3))

        def redeem_next_good_code() -> Attempt:
            token, code = bench.user(), next(good)
            return lambda: bench.redeem(token, code)

        success = [bench.measure(redeem_next_good_code, 200) for _ in range(SAMPLES)]

        used = bench.codes(1)
        bench.redeem(bench.user(), used[0])
        multi = bench.codes(1, max_uses=SAMPLES + 1)
        again = bench.user()
        bench.redeem(again, multi[0])
        disabled = bench.codes(1)
        bench.disable_batch(bench.last_batch)

        def by_new_user(code: Callable[[], str]) -> Callable[[], Attempt]:
            def prepare() -> Attempt:
                token, text = bench.user(), code()
                return lambda: bench.redeem(token, text)

            return prepare

        cases: dict[str, Callable[[], Attempt]] = {
            "unknown": by_new_user(lambda: codes.format_code(codes.generate())),
            "malformed_or_typo": by_new_user(lambda: "ABCD-EFGH"),
            "used_up": by_new_user(lambda: used[0]),
            "disabled": by_new_user(lambda: disabled[0]),
            "already_redeemed_by_user": lambda: lambda: bench.redeem(again, multi[0]),
        }
        failures = {
            name: summarise([bench.measure(attempt, 400) for _ in range(min(SAMPLES, 8))])
            for name, attempt in cases.items()
        }
        blocked, ip = bench.user(), new_ip()
        for _ in range(10):
            bench.redeem(blocked, codes.format_code(codes.generate()), ip)
        spare = next(good)
        refused = summarise(
            [
                bench.measure(lambda: lambda: bench.redeem(blocked, spare, ip), 429)
                for _ in range(SAMPLES)
            ]
        )

    result: dict[str, Any] = {
        "goal": "successful redeem: at most 1 read + 1 TransactWriteItems",
        "success": {
            **summarise(success),
            "meets_goal": all(
                sum(v for k, v in s.items() if k.removeprefix("dynamodb.") in READS) <= 1
                and s.get("dynamodb.TransactWriteItems", 0) == 1
                and sum(v for k, v in s.items() if k.startswith("dynamodb.")) <= 2
                for s in success
            ),
        },
        "failed": failures,
        "refused_429": refused,
    }
    print(
        "DynamoDB calls per redeem (median of samples; goal for success: <= 1 read + 1 "
        "TransactWriteItems)"
    )
    rows = (
        [("success", result["success"])]
        + [(f"failed: {name}", summary) for name, summary in failures.items()]
        + [("refused (429)", refused)]
    )
    for label, summary in rows:
        calls = ", ".join(
            f"{k.removeprefix('dynamodb.')}={v:g}" for k, v in summary["calls_median"].items() if v
        )
        print(f"  {label:<34} {summary['dynamodb_calls']:>3g} calls  ({calls})")
    print(f"  success meets goal: {result['success']['meets_goal']}")
    out = ROOT / "bench" / "results" / "redeem_calls.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
