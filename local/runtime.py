"""The Lambda runtime emulation: a pool of worker processes per function.

Each worker is a process of the function's runtime (local/worker.py under the interpreter
local/python_runtime.py prepares) with exactly the environment the template gives the
function plus what Lambda itself sets, and sys.path = code dir, layers (with their built
dependencies), the runtime's boto3/botocore, then the standard library. Idle workers are
reused (warm starts); new ones are spawned up to the function's concurrency limit; callers
wait beyond it. A handler exception is a function error and the worker lives on; a timeout
kills the worker, as Lambda does, and so does going over MemorySize (local/memory_limit.py).
An invocation that takes more than half its Timeout gets a warning line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from local import forkserver
from local import worker as worker_module
from local.clock import BillingClock
from local.memory_limit import MemoryWatch
from local.python_runtime import PreparedRuntime
from local.template import REGION, FunctionSpec

log = logging.getLogger("local.runtime")

# Generous on purpose: on a busy machine, importing a handler's dependencies in several
# workers at once can take far longer than Lambda's 10 s init limit.
INIT_TIMEOUT_SECONDS = float(os.environ.get("LOCAL_INIT_TIMEOUT", "120"))
WORKER_SCRIPT = Path(worker_module.__file__).resolve()
# How Lambda names the signal that ended a runtime ("Runtime exited with error: signal: ...").
_SIGNALS = {
    signal.SIGKILL: "killed",
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted",
}


@dataclass(frozen=True)
class InvokeResult:
    payload: str  # JSON text
    function_error: bool
    request_id: str
    duration_ms: float

    @property
    def error_type(self) -> str | None:
        if not self.function_error:
            return None
        try:
            return str(json.loads(self.payload).get("errorType"))
        except (ValueError, AttributeError):
            return None


class OutputMux:
    """Copies worker output lines to the stack's stdout, prefixed with the function name."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        # Readers of every line (as CloudWatch Logs reads a function's log: metrics).
        self.observers: list[Callable[[str, str], None]] = []

    def write_line(self, prefix: str, line: str) -> None:
        with self.lock:
            self.stream.write(f"[{prefix}] {line.rstrip()}\n")
            self.stream.flush()
        for observer in self.observers:
            observer(prefix, line)

    def follow(self, prefix: str, reader: IO[bytes]) -> None:
        def pump() -> None:
            with reader:
                for raw in reader:
                    self.write_line(prefix, raw.decode("utf-8", "replace"))

        threading.Thread(target=pump, name=f"output-{prefix}", daemon=True).start()


class WorkerDied(Exception):
    pass


class WorkerProcess:
    """The process of one worker (the interface runtime.py needs of it)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.is_alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()


class Worker:
    """One execution environment (process) of a function."""

    def __init__(
        self,
        spec: dict[str, Any],
        name: str,
        output: OutputMux,
        memory: MemoryWatch | None = None,
        zygotes: forkserver.Zygotes | None = None,
    ) -> None:
        self.spec = spec
        self.name = name
        self.output = output
        self.memory = memory
        self.zygotes = zygotes
        self.process: WorkerProcess | forkserver.ForkedProcess | None = None
        self.conn: Connection | None = None
        self.invocations = 0
        self.out_of_memory = False  # killed by the memory watch
        self.memory_used = 0  # bytes, when it was killed

    def _killed_for_memory(self, used: int) -> None:
        self.out_of_memory = True
        self.memory_used = used

    def start(self) -> dict[str, Any] | None:
        """Start and initialize; returns the init error (Lambda-style dict) if init failed."""
        try:
            return self._start()
        except (OSError, EOFError, ValueError):
            self.kill()
            if self.out_of_memory:
                return _out_of_memory(None)
            return _runtime_exit_error(None, "the worker was stopped during init")

    def _start(self) -> dict[str, Any] | None:
        parent, child = socket.socketpair()
        if self.zygotes is not None:
            zygote = self.zygotes.get(
                self.spec["python"],
                [*self.spec["layer_paths"], *self.spec["runtime_paths"]],
                self.spec["environment"],
            )
            self.process, stdout = zygote.spawn(child.detach())
        else:
            try:
                popen = subprocess.Popen(  # noqa: S603 - the runtime's interpreter
                    [self.spec["python"], "-I", "-S", str(WORKER_SCRIPT), str(child.fileno())],
                    pass_fds=(child.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=self.spec["environment"],
                )
            finally:
                child.close()
            self.process = WorkerProcess(popen)
            assert popen.stdout is not None
            stdout = popen.stdout
        self.conn = Connection(parent.detach())
        self.output.follow(self.spec["function_name"], stdout)
        if self.memory is not None:
            limit = int(self.spec["memory_size"]) * 1024 * 1024
            self.memory.watch(self.process.pid, limit, self._killed_for_memory)
        self.conn.send(("spec", self.spec))
        if not self.conn.poll(INIT_TIMEOUT_SECONDS):
            self.kill()
            return {
                "errorMessage": f"Init timed out after {INIT_TIMEOUT_SECONDS:.2f} seconds",
                "errorType": "Runtime.InitTimeout",
                "stackTrace": [],
            }
        try:
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            if self.out_of_memory:
                return _out_of_memory(None)
            return _runtime_exit_error(self.process.exitcode, "the worker exited during init")
        if kind != "ready":
            self.kill()
            error: dict[str, Any] = json.loads(payload)
            return error
        return None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def invoke(
        self, request_id: str, payload: str, timeout: float, clock_offset: float = 0.0
    ) -> tuple[str, str] | None:
        """Send one invocation; None if it timed out (the worker is then killed).
        clock_offset: the billing clock's offset (local/clock.py) the handler runs under."""
        assert self.conn is not None
        deadline = time.time() + timeout
        self.invocations += 1
        try:
            self.conn.send(("invoke", request_id, payload, deadline, clock_offset))
            if not self.conn.poll(timeout):
                self.kill()
                return None
            kind, body = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            self.kill()
            raise WorkerDied(str(exc)) from exc
        return str(kind), str(body)

    def stop(self) -> None:
        if self.conn is not None and self.alive:
            with contextlib.suppress(OSError):
                self.conn.send(("stop",))
        if self.process is not None:
            self.process.join(timeout=2)
        self.kill()

    def kill_process(self) -> None:
        """Kill the process only (safe while another thread waits on the pipe)."""
        if self.process is not None and self.process.is_alive():
            self.process.kill()

    def kill(self) -> None:
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=5)
            if self.memory is not None:
                self.memory.forget(self.process.pid)
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _runtime_exit_error(exit_code: int | None, detail: str) -> dict[str, Any]:
    if exit_code is None:
        status = "signal"
    elif exit_code < 0:
        status = (
            f"signal: {_SIGNALS.get(signal.Signals(-exit_code), signal.Signals(-exit_code).name)}"
        )
    else:
        status = f"exit status {exit_code}"
    return {
        "errorMessage": f"Runtime exited with error: {status} ({detail})",
        "errorType": "Runtime.ExitError",
        "stackTrace": [],
    }


def _out_of_memory(request_id: str | None) -> dict[str, Any]:
    # What Lambda answers when a function goes over its MemorySize: the sandbox is killed.
    prefix = f"RequestId: {request_id} " if request_id else ""
    return {
        "errorMessage": f"{prefix}Error: Runtime exited with error: signal: killed",
        "errorType": "Runtime.OutOfMemory",
    }


class FunctionPool:
    """Warm workers of one function, bounded by its concurrency."""

    def __init__(
        self,
        function: FunctionSpec,
        base_environment: dict[str, str],
        output: OutputMux,
        max_instances: int,
        spawn_slots: threading.Semaphore | None = None,
        credentials: tuple[str, str, str] = ("testing", "testing", "testing"),
        *,
        python: PreparedRuntime,
        memory: MemoryWatch | None = None,
        clock: BillingClock | None = None,
        zygotes: forkserver.Zygotes | None = None,
    ) -> None:
        self.function = function
        self.clock = clock or BillingClock()
        self.credentials = credentials
        self.output = output
        self.python = python
        self.memory = memory
        self.zygotes = zygotes
        self.max_instances = function.reserved_concurrency or max_instances
        self.spawn_slots = spawn_slots or threading.Semaphore(2)
        self._idle: list[Worker] = []
        self._all: set[Worker] = set()
        self._starting: set[Worker] = set()
        self._total = 0  # live or starting workers
        self._unclaimed_starts = 0  # workers starting ahead of demand (prewarm)
        self._claims = 0  # callers waiting for one of those
        self._cond = threading.Condition()
        self._closed = False
        self._spawned = 0
        self.init_error: dict[str, Any] | None = None
        self.invocations = 0
        self.errors = 0
        self.spec = self._worker_spec(base_environment)

    def _worker_spec(self, base_environment: dict[str, str]) -> dict[str, Any]:
        fn = self.function
        stream = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        log_group = f"/aws/lambda/{fn.logical_id}"
        reserved = {
            # What Lambda's runtime sets. These names are reserved in AWS (a template cannot
            # set them), so they are applied after the template's variables.
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            # The function's own credentials: the embedded AWS authorizes them against
            # exactly its policies (local/iam).
            "AWS_ACCESS_KEY_ID": self.credentials[0],
            "AWS_SECRET_ACCESS_KEY": self.credentials[1],
            "AWS_SESSION_TOKEN": self.credentials[2],
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{fn.runtime}",
            "AWS_LAMBDA_FUNCTION_NAME": fn.logical_id,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_size),
            "AWS_LAMBDA_LOG_GROUP_NAME": log_group,
            "AWS_LAMBDA_LOG_STREAM_NAME": stream,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "LAMBDA_TASK_ROOT": str(fn.code_dir),
            "TZ": "UTC",
            "_HANDLER": fn.handler,
        }
        environment = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "en_US.UTF-8",
            "POWERTOOLS_TRACE_DISABLED": "true",
            **fn.environment,
            **reserved,
            # Local only: every AWS SDK client talks to the embedded AWS.
            **base_environment,
        }
        return {
            "function_name": fn.logical_id,
            "function_arn": fn.arn,
            "memory_size": fn.memory_size,
            "log_group_name": log_group,
            "log_stream_name": stream,
            "handler": fn.handler,
            "code_dir": str(fn.code_dir),
            "layer_dirs": [str(p) for p in fn.layer_dirs],
            "environment": environment,
            "python": self.python.interpreter,
            "layer_paths": self.python.layer_paths(fn.layer_dirs),
            "runtime_paths": [str(self.python.runtime_dir)],
        }

    # ------------------------------------------------------------ workers

    def _spawn(self) -> Worker | dict[str, Any]:
        with self._cond:
            self._spawned += 1
            name = f"{self.function.logical_id}-{self._spawned}"
        worker = Worker(self.spec, name, self.output, self.memory, self.zygotes)
        # Few processes initialize at once: they compete for the same CPUs.
        with self.spawn_slots:
            with self._cond:
                if self._closed:
                    return _runtime_exit_error(None, "the local stack is shutting down")
                self._starting.add(worker)
            try:
                error = worker.start()
            finally:
                with self._cond:
                    self._starting.discard(worker)
        if error is not None:
            self.init_error = error
            if self._closed:
                return error  # killed by the shutdown, nothing to report
            self.output.write_line(
                self.function.logical_id,
                f"init failed: {error.get('errorType')}: {error.get('errorMessage')}",
            )
            return error
        self.init_error = None
        return worker

    def _acquire(self, ahead_of_demand: bool = False) -> Worker | dict[str, Any]:
        with self._cond:
            while True:
                if self._closed:
                    return _runtime_exit_error(None, "the local stack is shutting down")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive:
                        return worker
                    self._discard_locked(worker)
                if self._unclaimed_starts > self._claims:
                    # The prewarmed worker is still starting and nobody waits for it yet:
                    # wait for it rather than start one more.
                    self._claims += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._claims -= 1
                    continue
                if self._total < self.max_instances:
                    self._total += 1
                    if ahead_of_demand:
                        self._unclaimed_starts += 1
                    break
                self._cond.wait()
        spawned = self._spawn()
        with self._cond:
            if ahead_of_demand:
                self._unclaimed_starts -= 1
            if isinstance(spawned, Worker) and not self._closed:
                self._all.add(spawned)
            else:
                self._total -= 1
                self._cond.notify_all()
                if isinstance(spawned, Worker):
                    spawned.kill()
                    return _runtime_exit_error(None, "the local stack is shutting down")
        return spawned

    def _release(self, worker: Worker) -> None:
        with self._cond:
            if worker.alive and not self._closed:
                self._idle.append(worker)
            else:
                self._discard_locked(worker)
            self._cond.notify_all()

    def _discard_locked(self, worker: Worker) -> None:
        if worker in self._all:
            self._all.discard(worker)
            self._total -= 1
        worker.kill()

    def check_handler(self) -> bool:
        """Whether the handler's file exists; if not, say so now (and in the health)."""
        if self.function.handler_exists():
            return True
        self.init_error = self._missing_handler()
        self.output.write_line(
            self.function.logical_id,
            f"not started: handler file {self.function.handler_file} does not exist yet "
            "(invocations will fail until it does)",
        )
        return False

    def prewarm(self) -> None:
        """Start one worker ahead of the first invocation (errors are only logged)."""
        if not self.check_handler():
            return
        acquired = self._acquire(ahead_of_demand=True)
        if isinstance(acquired, Worker):
            self._release(acquired)

    def _missing_handler(self) -> dict[str, Any]:
        module = self.function.handler.rpartition(".")[0]
        return {
            "errorMessage": f"Unable to import module '{module}': No module named '{module}' "
            f"({self.function.handler_file} does not exist)",
            "errorType": "Runtime.ImportModuleError",
            "stackTrace": [],
        }

    # ------------------------------------------------------------ invoke

    def invoke(self, payload: str, request_id: str | None = None) -> InvokeResult:
        request_id = request_id or str(uuid.uuid4())
        started = time.monotonic()
        with self._cond:
            self.invocations += 1
        if not self.function.handler_exists():
            # No code yet: fail like Lambda's init would, without spawning a process per call.
            error = self._missing_handler()
            error["requestId"] = request_id
            return self._result(json.dumps(error), True, request_id, started)
        acquired = self._acquire()
        if not isinstance(acquired, Worker):
            return self._result(json.dumps(acquired), True, request_id, started)
        worker = acquired
        timeout = float(self.function.timeout)
        began = time.monotonic()
        try:
            reply = worker.invoke(request_id, payload, timeout, self.clock.offset)
        except WorkerDied:
            exit_code = worker.process.exitcode if worker.process is not None else None
            out_of_memory = worker.out_of_memory
            self._release(worker)
            if out_of_memory:
                error = _out_of_memory(request_id)
                self.output.write_line(self.function.logical_id, error["errorMessage"])
                self.output.write_line(
                    self.function.logical_id,
                    f"Runtime.OutOfMemory: Memory Size: {self.function.memory_size} MB "
                    f"Max Memory Used: {worker.memory_used // (1024 * 1024)} MB",
                )
            else:
                error = _runtime_exit_error(exit_code, "the worker process died")
                error["requestId"] = request_id
                self.output.write_line(self.function.logical_id, f"worker died: {error}")
            return self._result(json.dumps(error), True, request_id, started)
        self._release(worker)
        self._warn_if_slow(request_id, time.monotonic() - began, timeout)
        if reply is None:
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            message = f"{now} {request_id} Task timed out after {timeout:.2f} seconds"
            self.output.write_line(self.function.logical_id, message)
            error = {"errorMessage": message, "errorType": "Sandbox.Timedout"}
            return self._result(json.dumps(error), True, request_id, started)
        kind, body = reply
        return self._result(body, kind != "ok", request_id, started)

    def _warn_if_slow(self, request_id: str, seconds: float, timeout: float) -> None:
        # Half the Timeout is the margin an operator wants: past it, a busier day times out.
        if timeout / 2 < seconds < timeout:
            self.output.write_line(
                self.function.logical_id,
                f"WARNING: invocation {request_id} took {seconds:.2f} s, more than half of "
                f"its Timeout ({timeout:g} s)",
            )

    def _result(self, payload: str, error: bool, request_id: str, started: float) -> InvokeResult:
        if error:
            with self._cond:
                self.errors += 1
        return InvokeResult(payload, error, request_id, (time.monotonic() - started) * 1000)

    def recycle(self) -> None:
        """Stop idle workers so the next invocation imports fresh code."""
        with self._cond:
            idle, self._idle = self._idle, []
            for worker in idle:
                self._discard_locked(worker)
            self._cond.notify_all()

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "workers": self._total,
                "idle": len(self._idle),
                "max_instances": self.max_instances,
                "invocations": self.invocations,
                "errors": self.errors,
                "init_error": None
                if self.init_error is None
                else f"{self.init_error.get('errorType')}: {self.init_error.get('errorMessage')}",
            }

    def close(self) -> None:
        with self._cond:
            self._closed = True
            workers = list(self._all)
            starting = list(self._starting)
            self._idle.clear()
            self._cond.notify_all()
        for worker in starting:
            worker.kill_process()
        for worker in workers:
            worker.stop()


class Runtime:
    """All function pools of the stack."""

    def __init__(
        self,
        functions: list[FunctionSpec],
        aws_endpoint: str,
        output: OutputMux | None = None,
        max_instances: int | None = None,
        credentials: Callable[[str], tuple[str, str, str]] | None = None,
        *,
        python: dict[str, PreparedRuntime],
        memory_limit: bool = True,
        clock: BillingClock | None = None,
    ) -> None:
        """credentials: function logical id -> (access key, secret key, session token)."""
        self.output = output or OutputMux()
        self.clock = clock or BillingClock()
        limit = max_instances or int(os.environ.get("LOCAL_MAX_INSTANCES", "6"))
        base = {"AWS_ENDPOINT_URL": aws_endpoint}
        slots = threading.Semaphore(max(2, os.cpu_count() or 2))
        self.memory = MemoryWatch() if memory_limit else None
        # Workers forked from a zygote per runtime and layer set (local/zygote.py): a worker
        # then starts without importing its libraries again.
        self.zygotes = forkserver.Zygotes(self.output.follow) if forkserver.ENABLED else None
        self.pools = {
            f.logical_id: FunctionPool(
                f,
                base,
                self.output,
                limit,
                slots,
                credentials(f.logical_id) if credentials else ("testing", "testing", "testing"),
                python=python[f.runtime],
                memory=self.memory,
                clock=self.clock,
                zygotes=self.zygotes,
            )
            for f in functions
        }

    def __contains__(self, function: str) -> bool:
        return function in self.pools

    def invoke(self, function: str, payload: str, request_id: str | None = None) -> InvokeResult:
        return self.pools[function].invoke(payload, request_id)

    def prewarm(self, start_workers: bool = True) -> None:
        """One worker per function started ahead of demand; without start_workers, only the
        handlers' files checked."""
        if not start_workers:
            for pool in self.pools.values():
                pool.check_handler()
            return

        def warm(pool: FunctionPool) -> None:
            try:
                pool.prewarm()
            except Exception:
                log.exception("prewarming %s failed", pool.function.logical_id)

        for pool in self.pools.values():
            threading.Thread(
                target=warm, args=(pool,), name=f"prewarm-{pool.function.logical_id}", daemon=True
            ).start()

    def recycle(self) -> None:
        for pool in self.pools.values():
            pool.recycle()

    def invocation_counts(self) -> dict[str, int]:
        return {name: pool.invocations for name, pool in self.pools.items()}

    def status(self) -> dict[str, Any]:
        return {name: pool.status() for name, pool in self.pools.items()}

    def close(self) -> None:
        threads = [threading.Thread(target=pool.close, daemon=True) for pool in self.pools.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        if self.zygotes is not None:
            self.zygotes.close()
        if self.memory is not None:
            self.memory.stop()
