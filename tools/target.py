"""Where an operator command runs: the local stack (`--local URL`: table names and the
embedded AWS's endpoint from its /_local/health, settings from settings/local.json) or AWS
(table names from the command's options or the environment). One place for what the
migrations and the reconcile command share."""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCAL_SETTINGS = Path(__file__).resolve().parents[1] / "settings" / "local.json"
# The embedded AWS takes any credentials; these are moto's documented dummies.
LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def region(option: str | None = None) -> str:
    return (
        option or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    )


@dataclass(frozen=True)
class Target:
    region: str
    endpoint: str | None = None
    # Logical name (the template's, e.g. "UsageTable") -> table name; the local stack's only.
    tables: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        return bool(self.credentials)

    def client(self, service: str = "dynamodb") -> Any:
        import botocore.session

        return botocore.session.get_session().create_client(
            service, region_name=self.region, endpoint_url=self.endpoint, **self.credentials
        )

    def table(self, logical: str, option: str | None = None, variable: str = "") -> str:
        """The table's name: the local stack's, else the option, else $variable."""
        if self.local:
            return self.tables[logical]
        name = option or (os.environ.get(variable, "") if variable else "")
        if not name:
            raise ValueError(f"no {logical}: pass its option or set ${variable}")
        return name


def local(base_url: str, region_option: str | None = None) -> Target:
    """The running local stack at `base_url` (make dev)."""
    url = base_url.rstrip("/") + "/_local/health"
    if not url.startswith(("http://", "https://")):
        raise ValueError("--local must be an http(s) URL")
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - checked above
        health: dict[str, Any] = json.load(response)
    os.environ.setdefault("SETTINGS_FILE", str(LOCAL_SETTINGS))
    return Target(
        region=region(region_option),
        endpoint=str(health["aws_endpoint"]),
        tables={str(k): str(v) for k, v in health["tables"].items()},
        credentials=dict(LOCAL_CREDENTIALS),
    )


def aws(endpoint_option: str | None = None, region_option: str | None = None) -> Target:
    """AWS (or any endpoint given by --endpoint-url / $AWS_ENDPOINT_URL), default credentials."""
    endpoint = endpoint_option or os.environ.get("AWS_ENDPOINT_URL") or None
    return Target(region=region(region_option), endpoint=endpoint)


def choose(local_url: str | None, endpoint_option: str | None, region_option: str | None) -> Target:
    return local(local_url, region_option) if local_url else aws(endpoint_option, region_option)
