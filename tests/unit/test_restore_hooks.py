"""SnapStart restore hooks (billing.restore): every handler registers them with the runtime's
`snapshot_restore_py` at import; after a restore `random` no longer replays the snapshot's
sequence and every network client is made again on its next use."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from billing import db, idempotency, restore
from billing.events import publisher
from billing.models import Account
from billing.payments import payment_queue
from billing.payments.providers import http_client
from billing.payments.providers import stripe as stripe_provider
from billing.usage import dead_letters

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = sorted(p.parent for p in (ROOT / "functions").glob("*/app.py"))
# What the Lambda Python runtime ships for SnapStart, reduced to what we call: it records the
# callables registered, and the probe prints their names after `import app`.
FAKE_RUNTIME = """
registered = []
def register_after_restore(func, *args, **kwargs):
    registered.append(f"{func.__module__}.{func.__qualname__}")
    return func
"""
PROBE = "import json, app, snapshot_restore_py; print(json.dumps(snapshot_restore_py.registered))"


@pytest.fixture(autouse=True)
def aws_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("IDEMPOTENCY_TABLE", "idempotency")


@pytest.mark.parametrize("function_dir", HANDLERS, ids=[p.name for p in HANDLERS])
def test_every_handler_registers_the_restore_hooks_with_the_runtime(
    function_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "snapshot_restore_py.py").write_text(FAKE_RUNTIME)
    paths = [str(function_dir), str(tmp_path), str(ROOT / "layers" / "common")]
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=function_dir,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["billing.restore.restore"]


def test_without_snapstart_nothing_is_registered() -> None:
    # The local stack and the tests have no snapshot_restore_py: import works, nothing restores.
    assert restore.register_with_runtime() is False


def test_restored_instances_draw_different_random_sequences() -> None:
    random.seed(20)  # the state the snapshot captured
    snapshot = random.getstate()
    replayed = [random.random() for _ in range(4)]
    random.setstate(snapshot)
    assert [random.random() for _ in range(4)] == replayed  # without the hook: in lockstep

    drawn = []
    for _instance in range(2):
        random.setstate(snapshot)
        restore.restore()
        drawn.append([random.random() for _ in range(4)])
    assert drawn[0] != replayed and drawn[1] != replayed
    assert drawn[0] != drawn[1]


def test_every_network_client_is_made_again_after_a_restore() -> None:
    from aws_lambda_powertools.utilities.parameters import base as parameters

    def clients() -> dict[str, Any]:
        return {
            "dynamodb (shared)": db.connection(),
            "dynamodb (model)": Account._get_connection(),
            "sqs": payment_queue._sqs(),
            "sqs (usage DLQ, put-backs)": dead_letters.sqs(),
            "eventbridge": publisher._events(),
            "idempotency": idempotency._persistence(),
            "http session": http_client.session(),
            "stripe": stripe_provider._client("sk_test_restore"),
        }

    before = clients()
    assert clients() == before  # cached: the same objects until a restore
    parameters.DEFAULT_PROVIDERS["ssm"] = object()

    restore.restore()

    after = clients()
    assert [name for name in before if after[name] is before[name]] == []
    assert "ssm" not in parameters.DEFAULT_PROVIDERS


def test_hooks_run_in_registration_order_and_register_once() -> None:
    ran: list[str] = []

    def first() -> None:
        ran.append("first")

    def second() -> None:
        ran.append("second")

    registered = restore.hooks()
    try:
        restore.after_restore(first)
        restore.after_restore(second)
        restore.after_restore(first)
        restore.restore()
        assert ran == ["first", "second"]
    finally:
        restore._hooks[:] = registered


def test_imports_deferred_to_first_use_are_made_before_a_snapshot(tmp_path: Path) -> None:
    """A handler defers Powertools' idempotency utility (and boto3) to its first keyed
    request and its pydantic models' building to their first use; with SnapStart, the
    runtime's before-snapshot hook does both, so restored instances have them. Without
    SnapStart nothing is preloaded."""
    probe = (
        "import json, sys, app, snapshot_restore_py as rt\n"
        "deferred = 'aws_lambda_powertools.utilities.idempotency'\n"
        "at_import = deferred in sys.modules or 'boto3' in sys.modules\n"
        "from billing import http, settings\n"
        "from billing.api_models_orders import Order  # the function's own\n"
        "from billing.api_models_topups import TopupOptions\n"
        "bodies = tuple(http.RequestBody.__subclasses__())  # the function's request bodies\n"
        "assert bodies\n"
        "models = (Order, TopupOptions, settings.Settings, settings.Topup,\n"
        "          *bodies)\n"
        "built_at_import = any(m.__pydantic_complete__ for m in models)\n"
        "for hook in rt.before: hook()\n"
        "built = all(m.__pydantic_complete__ for m in models)\n"
        "print(json.dumps([at_import, deferred in sys.modules, 'boto3' in sys.modules,\n"
        "                  built_at_import, built]))\n"
    )
    runtime = (
        FAKE_RUNTIME + "before = []\ndef register_before_snapshot(func):\n    before.append(func)\n"
    )
    function_dir = ROOT / "functions" / "create_checkout"
    with_runtime = Path(os.environ.get("TMPDIR", "/tmp")) / f"snapstart-{os.getpid()}"
    with_runtime.mkdir(exist_ok=True)
    (with_runtime / "snapshot_restore_py.py").write_text(runtime)
    paths = [str(function_dir), str(with_runtime), str(ROOT / "layers" / "common")]
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=function_dir,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Deferred at import, made before the snapshot: the utility, boto3 and the models'
    # validators (defer_build) alike.
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, True, True, False, True]
