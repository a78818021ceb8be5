"""The functions' runtime, Python 3.12, for checks of the built artifacts (tests and bench)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path


def python312() -> str:
    """$PYTHON312, python3.12 on PATH, or pyenv's 3.12 (the Makefile looks in the same places)."""
    candidates = [os.environ.get("PYTHON312", ""), shutil.which("python3.12") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12.*/bin/python3.12")))
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.stdout.strip() == "True":
            return candidate
    raise RuntimeError("no Python 3.12 found (python3.12 on PATH or pyenv's)")


def runtime_packages() -> Path:
    """boto3/botocore and their dependencies as the Lambda runtime ships them, for Python 3.12:
    the local stack's build of them (.lambda-runtime/, built once and cached)."""
    from local.python_runtime import prepare

    root = Path(__file__).resolve().parents[2]
    environ = {**os.environ, "PYTHON312": python312()}
    return prepare(root, "python3.12", [], environ).runtime_dir
