"""The stack's side of local/zygote.py: one zygote per (interpreter, layer set), started on the
first worker of a function with those layers, and the worker processes it forks.

A forked worker is not the stack's child (the zygote reaps it), so its process is known by a
pidfd (signals can never reach a reused pid) and a status pipe (the zygote writes the wait
status there when the worker ends). ``LOCAL_FORK_WORKERS=0`` starts every worker as its own
interpreter instead (local/runtime.py), as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from local import zygote as zygote_module

ZYGOTE_SCRIPT = Path(zygote_module.__file__).resolve()
ENABLED = os.environ.get("LOCAL_FORK_WORKERS", "1") != "0" and hasattr(os, "pidfd_open")


class ForkedProcess:
    """A worker forked by a zygote (the interface runtime.py needs of a worker's process)."""

    def __init__(self, pid: int, pidfd: int, status_fd: int) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._status_fd = status_fd
        self._exitcode: int | None = None
        self._lock = threading.Lock()

    def _collect(self, timeout: float) -> None:
        status_fd = self._status_fd
        if status_fd < 0:
            return
        with contextlib.suppress(OSError, ValueError):  # closed meanwhile: collected
            ready, _, _ = select.select([status_fd], [], [], timeout)
            if not ready:
                return
        with self._lock:
            if self._status_fd < 0:
                return
            data = os.read(self._status_fd, 64)
            os.close(self._status_fd)
            self._status_fd = -1
            # No status at all: the zygote itself ended; the pidfd says how the worker fares.
            status = int(data) if data else None
            self._exitcode = (
                os.waitstatus_to_exitcode(status) if status is not None else -signal.SIGKILL
            )
            os.close(self._pidfd)
            self._pidfd = -1

    def is_alive(self) -> bool:
        self._collect(0)
        return self._exitcode is None

    def kill(self) -> None:
        with self._lock:
            if self._pidfd >= 0:
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def join(self, timeout: float) -> None:
        self._collect(timeout)

    @property
    def exitcode(self) -> int | None:
        self._collect(0)
        return self._exitcode


class Zygote:
    """One fork server; `spawn` is safe from any thread."""

    def __init__(
        self,
        python: str,
        paths: list[str],
        environment: dict[str, str],
        follow: Callable[[str, IO[bytes]], None],
    ) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = subprocess.Popen(  # noqa: S603 - the runtime's interpreter
                [python, "-I", "-S", str(ZYGOTE_SCRIPT), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        finally:
            theirs.close()
        assert self._process.stdout is not None
        follow("zygote", self._process.stdout)
        self._socket = ours
        self._lock = threading.Lock()
        ours.send(json.dumps(paths).encode())
        answer = json.loads(ours.recv(1 << 16) or b"{}")
        self.preloaded: list[str] = list(answer.get("preloaded") or [])

    def spawn(self, connection_fd: int) -> tuple[ForkedProcess, IO[bytes]]:
        """Fork a worker serving `connection_fd` (closed here); its output and process."""
        output_read, output_write = os.pipe()
        status_read, status_write = os.pipe()
        try:
            with self._lock:
                socket.send_fds(
                    self._socket, [b"fork"], [connection_fd, output_write, status_write]
                )
                message, fds, _, _ = socket.recv_fds(self._socket, 1 << 16, 1)
        except OSError:
            os.close(output_read)
            os.close(status_read)
            raise
        finally:
            os.close(output_write)
            os.close(status_write)
            os.close(connection_fd)
        if not message or not fds:
            os.close(output_read)
            os.close(status_read)
            raise OSError("the zygote ended")
        pid = int(json.loads(message)["pid"])
        return ForkedProcess(pid, fds[0], status_read), os.fdopen(output_read, "rb")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5)
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


class Zygotes:
    """The stack's zygotes, by interpreter and preloaded paths."""

    def __init__(self, follow: Callable[[str, IO[bytes]], None]) -> None:
        self._follow = follow
        self._zygotes: dict[tuple[str, tuple[str, ...]], Zygote] = {}
        self._lock = threading.Lock()
        self._closed = False

    def get(self, python: str, paths: list[str], environment: dict[str, str]) -> Zygote:
        key = (python, tuple(paths))
        with self._lock:
            if self._closed:
                raise OSError("the stack is stopping")
            zygote = self._zygotes.get(key)
            if zygote is None:
                zygote = Zygote(python, paths, environment, self._follow)
                self._zygotes[key] = zygote
            return zygote

    def close(self) -> None:
        with self._lock:
            self._closed = True
            zygotes, self._zygotes = list(self._zygotes.values()), {}
        for zygote in zygotes:
            zygote.close()
