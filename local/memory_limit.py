"""MemorySize as a hard limit: a watchdog kills a worker whose memory goes over it.

Lambda runs each execution environment in a sandbox of MemorySize MB; going over it kills
the runtime ("Runtime exited with error: signal: killed", Runtime.OutOfMemory). Locally a
thread samples every worker's resident set (/proc/PID/statm) every 50 ms and sends SIGKILL
past the limit. RLIMIT_AS would count address space Python reserves but never touches
(thread stacks, allocator arenas), so the resident set is the closer measure. An allocation
faster than the sampling may overshoot for a moment before the kill, as a page-fault-driven
cgroup kill does not; the outcome is the same. LOCAL_MEMORY_LIMIT=0 turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("local.memory")

INTERVAL_SECONDS = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class _Watched:
    limit: int  # bytes
    on_kill: Callable[[int], None]
    peak: int = 0


def resident_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class MemoryWatch:
    def __init__(self, interval: float = INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._watched: dict[int, _Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.available = os.path.exists(f"/proc/{os.getpid()}/statm")
        if not self.available:
            log.warning("no /proc on this system: MemorySize is not enforced")
            return
        threading.Thread(target=self._run, name="memory-watch", daemon=True).start()

    def watch(self, pid: int, limit: int, on_kill: Callable[[int], None]) -> None:
        with self._lock:
            self._watched[pid] = _Watched(limit, on_kill)

    def forget(self, pid: int) -> int:
        """Stop watching; the highest resident set seen (bytes)."""
        with self._lock:
            watched = self._watched.pop(pid, None)
        return watched.peak if watched else 0

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                watched = list(self._watched.items())
            for pid, entry in watched:
                used = resident_bytes(pid)
                if used is None:
                    continue
                entry.peak = max(entry.peak, used)
                if used > entry.limit:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    self.forget(pid)
                    entry.on_kill(used)
