"""Reconciliation on the session's stack: the scheduled function (its sample event, through the
Invoke API) and the command (`python -m tools.reconcile --local`) both find the tables clean
after whatever the suite has done so far; a schedule run emits the metric. Corruptions are
tested on tables of their own (tests/unit/test_reconciliation.py): never on the shared stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.stack import ROOT, LocalStack


def test_the_scheduled_function_finds_the_session_clean(stack: LocalStack) -> None:
    event = json.loads((ROOT / "events" / "reconcile_schedule.json").read_text())
    result = stack.invoke("ReconcileFunction", event)
    assert result["clean"] is True, result["sample"]
    assert result["differences"] == 0 and result["sample"] == []
    assert result["counts"]["accounts"] >= 1


def test_the_schedule_emits_the_metric(stack: LocalStack) -> None:
    response = stack.run_schedule("ReconcileFunction", "Hourly")
    assert response.status_code == 200, response.text
    assert response.json()["clean"] is True
    log = stack.log_text()
    assert '"ReconciliationDifferences":[0.0]' in log.replace(" ", "")


def test_the_command_reads_the_local_stack_and_exits_0(stack: LocalStack) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'layers' / 'common'}:{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-m", "tools.reconcile", "--local", stack.base_url, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["clean"] is True and report["differences"] == []
    assert set(report["counts"]) == {
        "accounts",
        "ledger_entries",
        "orders",
        "usage_records",
        "codes",
    }
