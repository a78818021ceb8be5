"""The functions' runtime, Python 3.12, for checks of the built artifacts (tests and bench)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess


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
