"""Cold start: import time of each handler module versus a bare `import boto3`.

Each measurement runs in a fresh interpreter (as a new Lambda instance would), with the
function's directory and the common layer on sys.path, and repeats to take the median.
Goal (issue 2): each handler imports in under 1.3x the time of `import boto3` alone.
Writes bench/results/cold_start.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
GOAL_RATIO = 1.3

TIMER = """
import sys, time
sys.path[:0] = {paths!r}
start = time.perf_counter()
{statement}
print(time.perf_counter() - start)
"""


def measure(statement: str, paths: list[str]) -> float:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SETTINGS_PARAMETER": "/bench/settings",
        "POWERTOOLS_SERVICE_NAME": "bench",
    }
    samples = []
    for _ in range(RUNS):
        out = subprocess.run(
            [sys.executable, "-c", TIMER.format(paths=paths, statement=statement)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        samples.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(samples) * 1000


def main() -> dict[str, object]:
    layer = str(ROOT / "layers" / "common")
    baseline = measure("import boto3", [])
    rows = []
    for function_dir in sorted((ROOT / "functions").iterdir()):
        if not (function_dir / "app.py").exists():
            continue
        millis = measure("import app", [str(function_dir), layer])
        ratio = millis / baseline
        rows.append(
            {
                "function": function_dir.name,
                "import_ms": round(millis, 1),
                "ratio_to_boto3": round(ratio, 2),
                "goal_ratio": GOAL_RATIO,
                "meets_goal": ratio < GOAL_RATIO,
            }
        )
    print(f"bare `import boto3`: {baseline:.1f} ms (median of {RUNS})")
    print(f"{'function':<20} {'import ms':>10} {'x boto3':>8}  goal < {GOAL_RATIO}x")
    for row in rows:
        mark = "ok" if row["meets_goal"] else "MISSED"
        print(f"{row['function']:<20} {row['import_ms']:>10} {row['ratio_to_boto3']:>8}  {mark}")
    result = {"boto3_import_ms": round(baseline, 1), "runs": RUNS, "handlers": rows}
    out = ROOT / "bench" / "results" / "cold_start.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
