"""The base of every response body: strict, built on first use (held built by a SnapStart
snapshot)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from billing import restore


class _Body(BaseModel):
    # API.md lets responses carry more fields than it names, but each must be declared here.
    # defer_build: a function answers a few of these models; each is built on first use
    # (validating a request, serialising a response) instead of all at every cold start.
    model_config = ConfigDict(extra="forbid", defer_build=True)


@restore.before_snapshot
def _build_models() -> None:
    # With SnapStart the snapshot holds these built (defer_build leaves them to first use).
    restore.build_models(_Body)
