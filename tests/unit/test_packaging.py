"""The layer ships exactly the runtime dependencies pyproject pins, and never boto3."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _requirements() -> list[str]:
    lines = (ROOT / "layers" / "common" / "requirements.txt").read_text().splitlines()
    return sorted(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def test_layer_requirements_match_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _requirements() == sorted(project["dependencies"])


def test_every_dependency_is_pinned_and_boto3_is_not_shipped() -> None:
    for requirement in _requirements():
        assert "==" in requirement, requirement
        name = requirement.split("==")[0].split("[")[0].lower()
        assert name not in {"boto3", "botocore"}, "the Lambda runtime provides boto3"


def test_every_function_has_a_handler_and_a_sample_event() -> None:
    events = {path.stem for path in (ROOT / "events").glob("*.json")}
    for function_dir in sorted((ROOT / "functions").iterdir()):
        assert (function_dir / "app.py").exists(), function_dir
        assert any(name.startswith(function_dir.name) for name in events), (
            f"events/ has no sample event for {function_dir.name}"
        )
