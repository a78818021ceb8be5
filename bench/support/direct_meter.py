"""The baseline of bench/local_overhead.py: the metering handler imported in this one process
and called directly (no Lambda emulation: no gateway, worker or Invoke API) with the same
events, so it issues the same ledger transactions straight to the embedded DynamoDB.

Run by bench/local_overhead.py with the function's environment (its table names, settings
parameter, AWS_ENDPOINT_URL of the local stack's embedded AWS). Reads a JSON list of rounds
(each a list of events) on stdin; prints one JSON line {"seconds": [...]} per round.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Context:
    function_name = "MeterUsageFunction"
    memory_limit_in_mb = 512
    aws_request_id = "bench"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:MeterUsageFunction"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def main() -> None:
    code_dir, clients = sys.argv[1], int(sys.argv[2])
    sys.path.insert(0, code_dir)
    import app  # the function's handler, as its worker imports it

    rounds: list[list[dict[str, Any]]] = json.load(sys.stdin)
    handler = app.handler
    seconds = []
    for events in rounds:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            results = list(pool.map(lambda event: handler(event, Context()), events))
        seconds.append(time.perf_counter() - started)
        refused = [r for r in results if r.get("status") != "charged"]
        assert not refused, refused[:3]
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
