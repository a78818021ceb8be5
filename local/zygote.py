"""A fork server for the workers of one runtime and layer set: a process of the function's
runtime (``python3.12 -I -S local/zygote.py FD``) that imports the libraries every function of
those layers imports first (boto3/botocore, pydantic, pynamodb, Powertools' logger), then forks
one worker per request. A worker then starts as local/worker.py would, from its own
environment and sys.path (worker.serve), minus the libraries' import: most of a worker's start
was spent there, once per worker, and the test suite starts hundreds of them.

Nothing of a function is imported here: the domain reads its environment (table names,
settings) when imported, and each function has its own. Only libraries that read no
environment at import are preloaded, and only from this zygote's own sys.path (the layers of
the functions it serves, then the runtime's boto3/botocore), so a function sees no module its
layers lack.

Protocol, over a SOCK_SEQPACKET socket: first the sys.path to preload from (JSON), answered
with what was preloaded; then one message per worker with three descriptors (the worker's
connection, its stdout, the write end of its status pipe): the zygote forks and answers
{"pid": N} with a pidfd of the child. The worker gets its spec over its connection, as a
started worker does. When the child exits the zygote
writes its wait status to the status pipe and closes it. EOF on the socket ends the zygote.

Standard library only, like local/worker.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import traceback

# Imported once here, in this order; a module missing from this zygote's paths is skipped
# (and whatever it imported is forgotten), so the worker's own import then fails as it would.
PRELOAD = (
    "boto3",
    "botocore.session",
    "botocore.client",
    "botocore.endpoint",
    "botocore.parsers",
    "botocore.serialize",
    "pydantic",
    "pynamodb.models",
    "pynamodb.attributes",
    "aws_lambda_powertools.logging",
    "aws_lambda_powertools.event_handler",
    "aws_lambda_powertools.event_handler.openapi.models",
    "aws_lambda_powertools.utilities.batch",
    "aws_lambda_powertools.utilities.parser",
)
WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


def _preload(paths: list[str]) -> list[str]:
    standard_library = [p for p in sys.path if p]
    sys.path[:] = [*paths, *standard_library]
    loaded: list[str] = []
    for name in PRELOAD:
        before = set(sys.modules)
        try:
            __import__(name)
        except Exception:  # not on these paths: the worker finds out itself
            for added in set(sys.modules) - before:
                del sys.modules[added]
            continue
        loaded.append(name)
    # Loader and resolution caches are rebuilt with the worker's own sys.path.
    sys.path_importer_cache.clear()
    sys.path[:] = standard_library
    return loaded


def _child(control: socket.socket, wakeup: int, fds: list[int]) -> None:
    conn_fd, stdout_fd, status_fd = fds
    control.close()
    os.close(wakeup)
    os.close(status_fd)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.dup2(stdout_fd, 1)
    os.dup2(stdout_fd, 2)
    os.close(stdout_fd)
    sys.argv = [WORKER_SCRIPT, str(conn_fd)]
    code = 0
    try:
        runpy.run_path(WORKER_SCRIPT, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # as an uncaught exception ends a script
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)  # never back into the zygote's loop


def _reap(status_pipes: dict[int, int]) -> None:
    while status_pipes:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = status_pipes.pop(pid, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, str(status).encode())
            os.close(fd)


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    paths = json.loads(control.recv(1 << 20))
    loaded = _preload(paths)
    control.send(json.dumps({"preloaded": loaded}).encode())

    read_wakeup, write_wakeup = os.pipe()
    os.set_blocking(write_wakeup, False)
    signal.set_wakeup_fd(write_wakeup)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector below
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stack decides when this ends
    status_pipes: dict[int, int] = {}
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(read_wakeup, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj == read_wakeup:
                with contextlib.suppress(BlockingIOError):
                    os.read(read_wakeup, 4096)
                _reap(status_pipes)
                continue
            message, fds, _, _ = socket.recv_fds(control, 1 << 20, 3)
            if not message:
                return
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                os.close(read_wakeup)
                _child(control, write_wakeup, fds)
            pidfd = os.pidfd_open(pid)
            status_pipes[pid] = fds[2]
            os.close(fds[0])
            os.close(fds[1])
            socket.send_fds(control, [json.dumps({"pid": pid}).encode()], [pidfd])
            os.close(pidfd)
            _reap(status_pipes)


if __name__ == "__main__":
    main()
