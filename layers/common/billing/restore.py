"""What a function must redo after a SnapStart restore (infra/template.yaml, SnapStart).

With SnapStart, Lambda runs INIT once per published version, snapshots the process and
starts every new instance from that snapshot. Two things captured at INIT must not be shared:
- `random`'s state: every restored instance would draw the same sequence (retry jitter in
  lockstep). Codes, ids and keys come from `secrets`/`uuid4` (the OS, per call) and are safe.
- network clients: their pooled connections were opened by the snapshotted instance and are
  dead (or worse, shared) in the restored one; they are dropped so each is made again on
  first use.

Each module that keeps a client registers its own hook with `after_restore`; `restore()` runs
them in registration order. On a runtime with SnapStart (the Lambda Python runtime ships
`snapshot_restore_py`) `restore` is registered with it at import; elsewhere (the local stack,
tests) nothing is restored and `restore()` is only called by the tests.
"""

from __future__ import annotations

import importlib
import random
import sys
from collections.abc import Callable
from typing import Any

Hook = Callable[[], None]

_hooks: list[Hook] = []


def after_restore(hook: Hook) -> Hook:
    """Register `hook` to run after a restore (usable as a decorator)."""
    if hook not in _hooks:
        _hooks.append(hook)
    return hook


def hooks() -> tuple[Hook, ...]:
    return tuple(_hooks)


def restore() -> None:
    """Run every hook, in the order they were registered."""
    for hook in _hooks:
        hook()


@after_restore
def reseed_random() -> None:
    # From the OS's entropy, as at interpreter start: each instance gets its own sequence.
    random.seed()


@after_restore
def forget_parameter_providers() -> None:
    # Powertools' parameter providers (settings from SSM, secrets) keep a boto3 client each;
    # dropping them drops their cached values too, read again once per restored instance.
    parameters = sys.modules.get("aws_lambda_powertools.utilities.parameters")
    if parameters is not None:
        parameters.clear_caches()


@after_restore
def forget_model_connections() -> None:
    # Each PynamoDB model keeps its table connection (a botocore client) on its class.
    models = sys.modules.get("pynamodb.models")
    if models is None:
        return
    pending: list[type] = [models.Model]
    while pending:
        model = pending.pop()
        pending += model.__subclasses__()
        if vars(model).get("_connection") is not None:
            model._connection = None  # type: ignore[attr-defined]


_preloads: list[str] = []
_warmers: list[Hook] = []


def preload_before_snapshot(module: str) -> None:
    """A module imported on first use (to keep cold starts short) that a SnapStart snapshot
    should hold already: imported before the snapshot is taken, where there is one."""
    if module not in _preloads:
        _preloads.append(module)


def before_snapshot(hook: Hook) -> Hook:
    """Work deferred to first use (building pydantic models) that a SnapStart snapshot
    should hold already: run before the snapshot, after the preloads (usable as a
    decorator)."""
    if hook not in _warmers:
        _warmers.append(hook)
    return hook


def preload() -> None:
    for module in _preloads:
        importlib.import_module(module)
    for hook in _warmers:
        hook()


def build_models(base: type[Any]) -> None:
    """Build every (deferred) pydantic model under `base`: validators and serialisers."""
    pending = list(base.__subclasses__())
    while pending:
        model = pending.pop()
        pending += model.__subclasses__()
        model.model_rebuild()


def register_with_runtime(runtime: Any = None) -> bool:
    """Register `restore` (and `preload`, before the snapshot) with the runtime's SnapStart
    hooks; False where there are none."""
    if runtime is None:
        try:
            runtime = importlib.import_module("snapshot_restore_py")
        except ImportError:
            return False
    runtime.register_after_restore(restore)
    if hasattr(runtime, "register_before_snapshot"):
        runtime.register_before_snapshot(preload)
    return True


register_with_runtime()
