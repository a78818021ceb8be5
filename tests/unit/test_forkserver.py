"""Workers forked from a zygote (local/zygote.py, local/forkserver.py) behave as workers started
as their own interpreter: their own environment and sys.path, the handler imported fresh, a
killed worker reported as killed; and a zygote preloads only what its own paths hold."""

from __future__ import annotations

import json
import signal
import sys
import uuid
from pathlib import Path

import pytest

from local.forkserver import Zygotes
from local.runtime import OutputMux, Worker, _runtime_exit_error

HANDLER = """
import os, sys
IMPORTED = sorted(m for m in ("boto3", "pydantic", "stripe") if m in sys.modules)
def handler(event, context):
    return {"env": os.environ.get("ONLY_MINE"), "path0": sys.path[0], "preloaded": IMPORTED,
            "pid": os.getpid()}
"""


def _spec(code_dir: Path, paths: list[str], mine: str) -> dict[str, object]:
    return {
        "function_name": "Probe",
        "function_arn": "arn:aws:lambda:us-east-1:123456789012:function:Probe",
        "memory_size": 256,
        "log_group_name": "/aws/lambda/Probe",
        "log_stream_name": "probe",
        "handler": "app.handler",
        "code_dir": str(code_dir),
        "layer_dirs": [],
        "environment": {"PATH": "/usr/bin:/bin", "ONLY_MINE": mine},
        "python": sys.executable,
        "layer_paths": [],
        "runtime_paths": paths,
    }


@pytest.fixture
def zygotes():  # type: ignore[no-untyped-def]
    output = OutputMux()
    made = Zygotes(output.follow)
    yield made, output
    made.close()


def test_forked_workers_get_their_own_environment_and_a_fresh_handler(
    zygotes: tuple[Zygotes, OutputMux], tmp_path: Path
) -> None:
    made, output = zygotes
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    # The dev venv's site-packages stand in for a layer: boto3 and pydantic are there.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    answers = []
    for mine in ("first", "second"):
        worker = Worker(_spec(code, [site], mine), f"probe-{mine}", output, zygotes=made)
        assert worker.start() is None
        assert worker.process is not None and worker.process.is_alive()
        kind, body = worker.invoke(uuid.uuid4().hex, "{}", timeout=30) or ("", "")
        assert kind == "ok", body
        answers.append(json.loads(body))
        worker.stop()
        assert worker.process.exitcode == 0
    assert [a["env"] for a in answers] == ["first", "second"]  # each its own environment
    assert all(a["path0"] == str(code) for a in answers)
    assert answers[0]["pid"] != answers[1]["pid"]
    # boto3 and pydantic were preloaded by the zygote (its paths hold them), stripe never.
    assert all(a["preloaded"] == ["boto3", "pydantic"] for a in answers)


def test_a_zygote_preloads_only_what_its_paths_hold(
    zygotes: tuple[Zygotes, OutputMux], tmp_path: Path
) -> None:
    made, _ = zygotes
    empty = made.get(sys.executable, [str(tmp_path)], {"PATH": "/usr/bin:/bin"})
    assert empty.preloaded == []
    site = next(p for p in sys.path if p.endswith("site-packages"))
    full = made.get(sys.executable, [site], {"PATH": "/usr/bin:/bin"})
    assert {"boto3", "pydantic"} <= set(full.preloaded)
    assert made.get(sys.executable, [site], {}) is full  # one zygote per interpreter and paths


def test_a_killed_forked_worker_reports_the_signal(
    zygotes: tuple[Zygotes, OutputMux], tmp_path: Path
) -> None:
    made, output = zygotes
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    worker = Worker(_spec(code, [], "x"), "probe-kill", output, zygotes=made)
    assert worker.start() is None
    process = worker.process
    assert process is not None
    worker.kill_process()
    process.join(timeout=10)
    assert not process.is_alive()
    assert process.exitcode == -signal.SIGKILL
    error = _runtime_exit_error(process.exitcode, "probe")
    assert error["errorMessage"] == "Runtime exited with error: signal: killed (probe)"
