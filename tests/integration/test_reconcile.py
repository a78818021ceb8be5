"""Reconciliation on the session's stack: the scheduled function (its sample event, through the
Invoke API) and the command (`python -m tools.reconcile --local`) both find the tables clean
after whatever the suite has done so far, also while usage is being metered; a schedule run
emits the metric. Corruptions are tested on tables of their own
(tests/unit/test_reconciliation.py), and 100,000 entries on a stack of their own
(tests/integration/test_reconcile_scale.py): never on the shared stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from typing import Any

import boto3
from botocore.config import Config

from tests.support.stack import ROOT, LocalStack

SCHEDULE = json.loads((ROOT / "events" / "reconcile_schedule.json").read_text())


def test_the_scheduled_function_finds_the_session_clean(stack: LocalStack) -> None:
    funded(stack)  # at least one account with entries, also when this module runs alone
    result = stack.invoke("ReconcileFunction", SCHEDULE)
    assert result["clean"] is True, result["sample"]
    assert result["differences"] == 0 and result["sample"] == []
    assert result["counts"]["accounts"] >= 1 and result["counts"]["ledger_entries"] >= 1


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


def reconcile_now(stack: LocalStack) -> dict[str, Any]:
    """One run of the function, waiting as long as a run of the whole session may take."""
    client = boto3.client(
        "lambda",
        endpoint_url=stack.base_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=900),
    )
    response = client.invoke(FunctionName="ReconcileFunction", Payload=json.dumps(SCHEDULE))
    result: dict[str, Any] = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, result
    return result


def funded(stack: LocalStack) -> str:
    user = f"recon-{uuid.uuid4().hex[:12]}"
    created = stack.request("POST", "/account", token=stack.token(user), json={})
    assert created.status_code == 201, created.text
    adjusted = stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=stack.token("admin-reconcile", admin=True),
        json={"delta": 500_000_000, "reason": "reconcile while metering"},
    )
    assert adjusted.status_code == 200, adjusted.text
    return user


def usage(user: str, action: str, request_id: str, completion_tokens: int) -> dict[str, Any]:
    return {
        "action": action,
        "request_id": request_id,
        "user_id": user,
        "model": "gpt-4o",
        "prompt_tokens": 120,
        "completion_tokens": completion_tokens,
    }


def test_reconciliation_while_usage_is_metered_finds_no_difference(stack: LocalStack) -> None:
    """Charges, reserves and settles commit all through the run (each batch a ledger
    transaction of one account, and records changing with it): the run compares each account
    at one version, so metering never shows as a difference, and once it stops a run is
    clean and verifies every account."""
    users = [funded(stack) for _ in range(3)]
    stop, during = threading.Event(), threading.Event()
    batches: list[int] = []
    failures: list[Any] = []

    def meter() -> None:
        open_holds: dict[str, str] = {}
        n = 0
        while not stop.is_set():
            n += 1
            for user in users:
                events = [usage(user, "charge", f"req-{uuid.uuid4().hex}", 40)]
                if user in open_holds:  # settle the hold left open by the last round
                    events.append(usage(user, "settle", open_holds.pop(user), 200))
                if n % 2:
                    open_holds[user] = f"req-{uuid.uuid4().hex}"
                    events.append(usage(user, "reserve", open_holds[user], 400))
                result, failed = _invoke(stack, "MeterUsageFunction", {"events": events})
                if failed or any(r["status"] == "rejected" for r in result["results"]):
                    failures.append(result)
                    return
                batches.append(1)
                if during.is_set():
                    batches.append(0)  # a batch metered while the run was going on

        for user, request_id in open_holds.items():  # leave nothing held
            _invoke(stack, "MeterUsageFunction", usage(user, "settle", request_id, 200))

    metering = threading.Thread(target=meter)
    metering.start()
    try:
        while len(batches) < 3 and metering.is_alive():
            threading.Event().wait(0.2)
        during.set()
        result = reconcile_now(stack)
        during.clear()
        metered_during = batches.count(0)
    finally:
        stop.set()
        metering.join()
    assert not failures, failures
    assert metered_during > 0  # the run did overlap with metering
    assert result["complete"] is True
    assert result["differences"] == 0, result["sample"]
    after = reconcile_now(stack)
    assert after["clean"] is True and after["unverified"] == 0, after["sample"]


def _invoke(stack: LocalStack, function: str, payload: Any) -> tuple[dict[str, Any], bool]:
    response = stack.lambda_client().invoke(
        FunctionName=function, Payload=json.dumps(payload).encode()
    )
    body = json.loads(response["Payload"].read())
    return body, bool(response.get("FunctionError"))
