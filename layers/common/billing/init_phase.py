"""Lambda's INIT phase without the cyclic garbage collector.

Importing a handler allocates some 10^5 objects (classes, functions, schemas) that live as
long as the process; none of them is garbage, yet every collection the allocations trigger
walks them, and the full ones walk everything the libraries built before: 10-15 ms of each
cold start here (bench/cold_start.py). So in a Lambda process (AWS_LAMBDA_FUNCTION_NAME is
set) collection is off from the first import of `billing` until the handler module has been
imported: `finished()`, the last statement of every functions/*/app.py, moves what INIT built
into the permanent generation (never traversed again, which also keeps every later
collection short) and turns the collector back on for the invocations.

Elsewhere (tests, tools, the admin CLI) nothing changes.
"""

from __future__ import annotations

import gc
import os

_paused = False


def begin() -> None:
    global _paused
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") and gc.isenabled():
        gc.disable()
        _paused = True


def finished() -> None:
    """The handler module is imported: freeze what INIT built, collect from now on."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False
