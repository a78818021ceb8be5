"""The client package: boto3 is its only dependency, and the LiteLLM venv the integration
tests use holds the pinned LiteLLM and exactly this checkout's client (installed from
clients/python, not from this source tree on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
LITELLM_PYTHON = ROOT / ".venv-litellm" / "bin" / "python"


def test_the_core_depends_on_boto3_only() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0].split("=")[0] for d in project["dependencies"]] == ["boto3"]
    pinned = (CLIENT / "requirements-litellm.txt").read_text().split()
    assert pinned == ["litellm[proxy]==1.108.0"]


def test_the_litellm_venv_runs_this_checkouts_client() -> None:
    assert LITELLM_PYTHON.exists(), "run `make litellm-venv`"
    probe = (
        "import json, pathlib, importlib.metadata as m, quota_meter; "
        "root = pathlib.Path(quota_meter.__file__).parent; "
        "print(json.dumps({'litellm': m.version('litellm'), 'where': str(root), "
        "'files': {p.name: p.read_text() for p in sorted(root.glob('*.py'))}}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(LITELLM_PYTHON), "-c", probe],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    installed = json.loads(done.stdout.strip().splitlines()[-1])
    assert installed["litellm"] == "1.108.0"
    assert "site-packages" in installed["where"]
    source = {p.name: p.read_text() for p in sorted((CLIENT / "src" / "quota_meter").glob("*.py"))}
    assert installed["files"] == source, "stale client in .venv-litellm: run `make litellm-venv`"
