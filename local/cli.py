"""Command line of the local stack."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from local.gateway import PortInUse
from local.stack import LogToMux, Options, Stack
from local.template import TemplateError, find_project_root

DEFAULT_PORT = 3000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m local",
        description="Run the SAM template's HTTP API, functions, tables and queues locally "
        "over an embedded AWS (moto). Everything is built from the template.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"listen on 127.0.0.1:PORT (default: $PORT or {DEFAULT_PORT}; 0 = any free port)",
    )
    parser.add_argument(
        "--template",
        type=Path,
        default=None,
        help="the SAM template (default: infra/template.yaml)",
    )
    parser.add_argument(
        "--settings",
        action="append",
        default=[],
        metavar="[LogicalId=]PATH",
        help="use this file as the value of the settings parameter (the SSM parameter with "
        "Metadata.Local.ValueFile) instead of that ValueFile",
    )
    parser.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="Name=Value",
        help="override a template parameter (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    port = args.port if args.port is not None else int(os.environ.get("PORT", DEFAULT_PORT))
    template = (args.template or Path("infra/template.yaml")).resolve()
    parameters: dict[str, str] = {}
    for item in args.parameter:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"error: --parameter expects Name=Value, got {item!r}", file=sys.stderr)
            return 2
        parameters[name] = value
    root = find_project_root(template.parent)
    stack = Stack(
        Options(
            port=port, template=template, root=root, settings=args.settings, parameters=parameters
        )
    )

    handler = LogToMux(stack.output)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    try:
        stack.bind()
    except PortInUse as exc:
        print(
            f"error: cannot listen on 127.0.0.1:{port}: the port is already in use ({exc}). "
            "Stop the other process or pick another port with --port or PORT.",
            file=sys.stderr,
            flush=True,
        )
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        stack.load_template()
        stack.start()
    except (TemplateError, RuntimeError, OSError) as exc:
        stack.startup_error = str(exc)
        print(f"error: the local stack could not start: {exc}", file=sys.stderr, flush=True)
        stack.stop()
        return 1
    except Exception as exc:
        logging.getLogger("local").exception("the local stack could not start")
        stack.startup_error = str(exc)
        stack.stop()
        return 1

    base = f"http://127.0.0.1:{stack.port}"
    stack.say(f"ready on {base} (API, Lambda Invoke API, /_local/...)")
    stack.say(f"console: {base}/console/topup")
    while not stop.wait(0.5):
        pass
    stack.say("stopping")
    stack.stop()
    stack.say("stopped")
    return 0
