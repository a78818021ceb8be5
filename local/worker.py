"""The inside of one Lambda execution environment: a process of the function's own runtime
(``python3.12 -I -S local/worker.py FD``) that imports one handler and serves invocations
sent over the connection on FD.

Run as a script and standard library only, so that the function sees no module of the
stack, and an environment and sys.path built from the template alone (see
local/python_runtime.py): code dir, each layer (source, then its built dependencies), the
runtime's boto3/botocore, then the interpreter's standard library.
"""

from __future__ import annotations

import contextlib
import decimal
import importlib
import json
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any


class LambdaContext:
    """The context object the Python runtime passes to a handler."""

    def __init__(self, spec: dict[str, Any], request_id: str, deadline: float) -> None:
        self.function_name: str = spec["function_name"]
        self.function_version = "$LATEST"
        self.invoked_function_arn: str = spec["function_arn"]
        self.memory_limit_in_mb = int(spec["memory_size"])
        self.aws_request_id = request_id
        self.log_group_name: str = spec["log_group_name"]
        self.log_stream_name: str = spec["log_stream_name"]
        self.identity: Any = None
        self.client_context: Any = None
        self.tenant_id: str | None = None
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))

    def log(self, message: str) -> None:
        sys.stdout.write(message)


def _decimal_default(value: Any) -> Any:
    # The Lambda Python runtime's marshaller turns Decimals into numbers.
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _error(
    exc: BaseException,
    error_type: str | None = None,
    message: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    frames = traceback.extract_tb(exc.__traceback__)
    error: dict[str, Any] = {
        "errorMessage": message if message is not None else str(exc),
        "errorType": error_type or type(exc).__name__,
    }
    if request_id:
        error["requestId"] = request_id
    error["stackTrace"] = traceback.format_list(frames)
    return error


def _log_error(error: dict[str, Any], exc: BaseException) -> None:
    # What the Lambda runtime writes to the function's log for an unhandled error.
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    sys.stderr.write(f"[ERROR] {error['errorType']}: {error['errorMessage']}\n{lines}")
    sys.stderr.flush()


def _load_handler(handler: str) -> Any:
    module_name, _, attribute = handler.rpartition(".")
    module_name = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as exc:
        error = _error(
            exc, "Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {exc}"
        )
        _log_error(error, exc)
        raise _InitError(error) from exc
    except ImportError as exc:
        error = _error(
            exc, "Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}"
        )
        _log_error(error, exc)
        raise _InitError(error) from exc
    except Exception as exc:
        error = _error(exc)
        _log_error(error, exc)
        raise _InitError(error) from exc
    function = getattr(module, attribute, None)
    if function is None:
        raise _InitError(
            {
                "errorMessage": f"Handler '{attribute}' missing on module '{module_name}'",
                "errorType": "Runtime.HandlerNotFound",
                "stackTrace": [],
            }
        )
    return function


class _InitError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["errorMessage"])
        self.error = error


CLOCK_OFFSET_VARIABLE = "BILLING_CLOCK_OFFSET_SECONDS"  # as local/clock.py (stdlib only here)


def serve(conn: Connection, spec: dict[str, Any]) -> None:
    """Set up the environment, import the handler, serve invocations."""
    # Ctrl-C reaches the whole process group; the stack decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)

    os.environ.clear()
    os.environ.update(spec["environment"])
    standard_library = [p for p in sys.path if p]  # -I -S: the interpreter's own only
    sys.path[:] = [spec["code_dir"], *spec["layer_paths"], *spec["runtime_paths"]]
    sys.path += standard_library
    with contextlib.suppress(OSError):  # no code yet: the import below reports it
        os.chdir(spec["code_dir"])
    time.tzset()

    try:
        handler = _load_handler(spec["handler"])
    except _InitError as exc:
        conn.send(("init_error", json.dumps(exc.error)))
        return
    conn.send(("ready", ""))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        _, request_id, payload, deadline, clock_offset = message
        # The billing clock (local/clock.py): billing.clock reads it; unset in AWS.
        if clock_offset:
            os.environ[CLOCK_OFFSET_VARIABLE] = repr(float(clock_offset))
        else:
            os.environ.pop(CLOCK_OFFSET_VARIABLE, None)
        conn.send(_invoke(handler, spec, request_id, payload, deadline))


def _invoke(
    handler: Any, spec: dict[str, Any], request_id: str, payload: str, deadline: float
) -> tuple[str, str]:
    context = LambdaContext(spec, request_id, deadline)
    try:
        event = json.loads(payload)
        result = handler(event, context)
    except Exception as exc:
        error = _error(exc, request_id=request_id)
        _log_error(error, exc)
        return ("error", json.dumps(error))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        return ("ok", json.dumps(result, default=_decimal_default))
    except (TypeError, ValueError) as exc:
        error = {
            "errorMessage": f"Unable to marshal response: {exc}",
            "errorType": "Runtime.MarshalError",
            "requestId": request_id,
            "stackTrace": [],
        }
        return ("error", json.dumps(error))


def main() -> None:
    conn = Connection(int(sys.argv[1]))
    kind, spec = conn.recv()
    if kind == "spec":
        serve(conn, spec)


if __name__ == "__main__":
    main()
