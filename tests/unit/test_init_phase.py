"""INIT without the cyclic garbage collector (billing.init_phase): in a Lambda process every
handler's import runs with collection off and ends with it on again, what INIT built frozen;
anywhere else importing the domain leaves the collector alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = sorted(p.parent for p in (ROOT / "functions").glob("*/app.py"))
PROBE = """
import gc, json
import billing
paused = not gc.isenabled()
import app
garbage = []
garbage.append(garbage)  # a cycle: collected only by the cyclic collector
del garbage
print(json.dumps({"paused": paused, "enabled": gc.isenabled(),
                  "frozen": gc.get_freeze_count(), "collected": gc.collect()}))
"""


def probe(function_dir: Path, **env: str) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if k != "AWS_LAMBDA_FUNCTION_NAME"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=function_dir,
        env={
            **base,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONPATH": os.pathsep.join([str(function_dir), str(ROOT / "layers" / "common")]),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("function_dir", HANDLERS, ids=[p.name for p in HANDLERS])
def test_a_lambda_init_runs_without_collection_and_ends_with_it_on(function_dir: Path) -> None:
    state = probe(function_dir, AWS_LAMBDA_FUNCTION_NAME=function_dir.name)
    assert state["paused"] is True  # from the first import of the domain
    assert state["enabled"] is True  # the handler module's last statement turned it back on
    assert state["frozen"] > 10_000  # what INIT built: never traversed again
    assert state["collected"] >= 1  # garbage made after INIT is collected as usual


def test_outside_lambda_importing_the_domain_leaves_the_collector_alone() -> None:
    state = probe(ROOT / "functions" / "account")
    assert state["paused"] is False
    assert state["enabled"] is True
    assert state["frozen"] == 0
