"""Where each handler's import time goes (python -X importtime), by top-level package.

Complements cold_start.py (which times `import app` against `import boto3`): here each fresh
interpreter's import tree is split by package (self times summed, so the parts add up to the
total), median of BENCH_RUNS runs, for every handler and for `import boto3` itself. It shows
which part of a cold start is the domain and which is botocore (pynamodb's), pydantic and
Powertools, that every request path needs.

    .venv/bin/python bench/import_profile.py        writes bench/results/import_profile.json
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
OUT = ROOT / "bench" / "results" / "import_profile.json"
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
GROUPS = (
    "botocore",
    "boto3",
    "pydantic",
    "pydantic_core",
    "aws_lambda_powertools",
    "pynamodb",
    "urllib3",
    "billing",
)


def profile(statement: str, paths: list[str]) -> dict[str, float]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SETTINGS_PARAMETER": "/bench/settings",
        "POWERTOOLS_SERVICE_NAME": "bench",
    }
    code = f"import sys; sys.path[:0] = {paths!r}; {statement}"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    parts: dict[str, float] = {}
    for line in done.stderr.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        top = match.group(4).split(".")[0]
        group = top if top in GROUPS else "other (stdlib, app, small packages)"
        parts[group] = parts.get(group, 0.0) + int(match.group(1)) / 1000
    parts["total"] = sum(parts.values())
    return parts


def median_profile(statement: str, paths: list[str]) -> dict[str, float]:
    samples = [profile(statement, paths) for _ in range(RUNS)]
    keys = sorted({k for s in samples for k in s}, key=lambda k: (k == "total", k))
    return {k: round(statistics.median(s.get(k, 0.0) for s in samples), 1) for k in keys}


def main() -> dict[str, Any]:
    layer = str(ROOT / "layers" / "common")
    result: dict[str, Any] = {"runs": RUNS, "boto3": median_profile("import boto3", [])}
    handlers: dict[str, Any] = {}
    for function_dir in sorted((ROOT / "functions").iterdir()):
        if (function_dir / "app.py").exists():
            handlers[function_dir.name] = median_profile("import app", [str(function_dir), layer])
    result["handlers"] = handlers
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
