"""Wires the local stack together: listener, embedded AWS, provisioning, runtime, pollers."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from local.async_invoke import AsyncInvoker, async_configs
from local.auth import DevIssuer
from local.aws import EmbeddedAws
from local.clock import BillingClock
from local.deploy_checks import check as check_deploy_rules
from local.eventbridge import EventBridge, build_event_bridge
from local.gateway import Gateway
from local.iam.enforcer import Enforcer
from local.metrics import MetricsCollector
from local.parameters import parameter_overrides
from local.pollers import Schedule, SqsPoller, build_pollers, build_schedules
from local.provision import Provisioned, Provisioner, local_environment, waffo_keys
from local.python_runtime import PreparedRuntime, RuntimeUnavailable, prepare
from local.routes import HttpApi, Route, read_apis, read_routes
from local.runtime import OutputMux, Runtime
from local.sandbox import (
    Sandbox,
    SandboxContext,
    SandboxStore,
    WaffoSandboxKeys,
    load_providers,
)
from local.stream_pollers import StreamPoller, build_stream_pollers
from local.strictness import Strictness, StrictnessError
from local.template import (
    EMULATED_EVENT_TYPES,
    PARAMETER_TYPE,
    FunctionSpec,
    Template,
    TemplateError,
)

log = logging.getLogger("local")


@dataclass
class Options:
    port: int
    template: Path
    root: Path
    settings: list[str] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)


class LogToMux(logging.Handler):
    def __init__(self, mux: OutputMux) -> None:
        super().__init__()
        self.mux = mux

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:  # pragma: no cover - logging must never raise
            return
        level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
        self.mux.write_line("local", level + message)


class Stack:
    def __init__(self, options: Options, environ: Mapping[str, str] | None = None) -> None:
        self.options = options
        self.environ = dict(os.environ if environ is None else environ)
        self.output = OutputMux()
        self.metrics = MetricsCollector()
        self.output.observers.append(self.metrics.observe)
        self.ready = threading.Event()
        self.startup_error: str | None = None
        self.port = options.port
        self.gateway = Gateway(self)
        self.aws = EmbeddedAws()
        self.template: Template | None = None
        self.runtime: Runtime | None = None
        self.issuer: DevIssuer | None = None
        self.sandbox: Sandbox | None = None
        self.routes: list[Route] = []
        self.api: HttpApi | None = None
        self.pollers: list[SqsPoller] = []
        self.stream_pollers: list[StreamPoller] = []
        self.event_bridge: EventBridge | None = None
        self.schedules: list[Schedule] = []
        self.async_invoker: AsyncInvoker | None = None
        self.provisioned = Provisioned()
        self.iam: Enforcer | None = None
        self.clock = BillingClock()
        self.console_dir = options.root / "console"

    def say(self, message: str) -> None:
        self.output.write_line("local", message)

    # ------------------------------------------------------------ start

    def bind(self) -> int:
        """Take the port first, so that a port in use fails fast (raises PortInUse)."""
        self.port = self.gateway.bind(self.options.port)
        self.gateway.serve_in_background()
        return self.port

    def load_template(self) -> Template:
        overrides = parameter_overrides(self.port, self.environ)
        overrides.update(self.options.parameters)
        template = Template(self.options.template, overrides, root=self.options.root)
        unknown = set(self.options.parameters) - set(template.parameters)
        if unknown:
            raise TemplateError(f"--parameter for undeclared parameters: {sorted(unknown)}")
        self.template = template
        return template

    def _settings_overrides(self, template: Template) -> dict[str, Path]:
        with_files = [
            r.logical_id
            for r in template.of_type(PARAMETER_TYPE)
            if r.local_metadata.get("ValueFile")
        ]
        overrides: dict[str, Path] = {}
        for item in self.options.settings:
            logical_id, sep, path = item.partition("=")
            if not sep:
                if len(with_files) != 1:
                    raise TemplateError(
                        "--settings PATH needs exactly one SSM parameter with "
                        "Metadata.Local.ValueFile; use --settings LogicalId=PATH"
                    )
                logical_id, path = with_files[0], item
            elif logical_id not in with_files:
                raise TemplateError(
                    f"--settings: {logical_id} is not an SSM parameter with a "
                    "Metadata.Local.ValueFile"
                )
            resolved = Path(path).expanduser().resolve()
            if not resolved.is_file():
                raise TemplateError(f"--settings: {resolved} does not exist")
            overrides[logical_id] = resolved
        return overrides

    def start(self) -> None:
        template = self.template or self.load_template()
        settings = self._settings_overrides(template)
        try:
            strictness = Strictness.from_environ(self.environ)
        except StrictnessError as exc:
            raise TemplateError(str(exc)) from exc
        self.aws.strictness = strictness
        endpoint = self.aws.start()
        template.aws_endpoint = endpoint
        self.say(f"embedded AWS (moto) on {endpoint}")
        self.say(f"as strict as AWS: {strictness.describe()}")

        keys = waffo_keys(self.environ)
        credentials = local_environment(self.environ, keys)
        provider_env = {**self.environ, **credentials}
        self.provisioned = Provisioner(template, self.aws, provider_env, settings).run()
        provisioned = self.provisioned
        self.say(
            f"provisioned {len(provisioned.tables)} tables ({len(provisioned.streams)} with "
            f"streams), {len(provisioned.queues)} queues, {len(provisioned.topics)} topics, "
            f"{len(provisioned.event_buses)} event buses, {len(provisioned.parameters)} "
            f"parameters, {len(provisioned.secrets)} secrets"
        )

        # IAM from here on: each function's calls are checked against its own role.
        iam = self.iam = Enforcer.from_template(template, self.provisioned.secrets)
        self.aws.set_authorizer(iam.check_aws_request)
        self.say(f"IAM enforced for {len(iam.roles)} functions (each with its own credentials)")

        functions = [template.function(fid) for fid in template.function_ids()]
        check_deploy_rules(template, functions)
        for function in functions:
            for event in function.events:
                if event.type not in EMULATED_EVENT_TYPES:
                    log.warning(
                        "%s.%s: %s events are not emulated locally",
                        function.logical_id,
                        event.name,
                        event.type,
                    )
        self.runtime = Runtime(
            functions,
            endpoint,
            self.output,
            credentials=self._credentials,
            python=self._lambda_runtimes(functions),
            memory_limit=strictness.memory_limit,
            clock=self.clock,
        )
        self.async_invoker = AsyncInvoker(
            self.runtime.invoke,
            async_configs(template),
            retries=strictness.async_retries,
            time_scale=strictness.time_scale,
        )
        # Every PutEvents the embedded AWS accepts is recorded and routed to its rules.
        self.event_bridge = build_event_bridge(
            template, functions, self.async_invoker.submit, self.aws.client("sqs")
        )
        self.aws.observe(self.event_bridge.observe)
        if self.event_bridge.rules:
            self.say(f"EventBridge: {len(self.event_bridge.rules)} rules with an event pattern")
        apis = read_apis(template)
        self.routes = read_routes(template, apis)
        used = {route.api for route in self.routes}
        self.api = next((apis[a] for a in apis if a in used), None)
        issuers = {r.authorizer.issuer for r in self.routes if r.authorizer is not None}
        dev_issuer = f"http://127.0.0.1:{self.port}/_local"
        for issuer in issuers - {dev_issuer}:
            log.warning(
                "routes use the JWT issuer %s, which is not the dev issuer: their "
                "requests will be rejected",
                issuer,
            )
        self.issuer = DevIssuer(dev_issuer)

        failed = load_providers()
        self.sandbox = Sandbox(
            SandboxContext(
                port=self.port,
                store=SandboxStore(),
                credentials=credentials,
                waffo=WaffoSandboxKeys(
                    platform_private_pem=keys.platform_private_pem,
                    platform_public_pem=keys.platform_public_pem,
                    merchant_public_pem=keys.merchant_public_pem,
                ),
            )
        )
        if failed:
            log.warning("sandbox modules that failed to load: %s", ", ".join(failed))

        self.runtime.prewarm(start_workers=os.environ.get("LOCAL_PREWARM", "1") != "0")
        self.pollers = build_pollers(
            template,
            functions,
            self.runtime.invoke,
            lambda function_id: self.aws.client("sqs", self._credentials(function_id)),
            self.aws.client("sqs"),
            strictness,
        )
        for poller in self.pollers:
            if poller.enabled:
                poller.start()
        for poller in self.pollers:
            if poller.enabled and not poller.ready.wait(10):
                raise RuntimeError(f"poller {poller.function_id}/{poller.event_name} did not start")
        self.stream_pollers = build_stream_pollers(
            template,
            functions,
            self.runtime.invoke,
            lambda function_id, service: self.aws.client(service, self._credentials(function_id)),
            lambda arn: template.queue_url(template.queue_by_arn(arn)),
            self.aws.streams.wait_for_records,
            strictness,
        )
        for stream_poller in self.stream_pollers:
            if stream_poller.enabled:
                stream_poller.start()
        for stream_poller in self.stream_pollers:
            # LATEST means from here: the shard iterators exist before the stack is ready.
            if stream_poller.enabled and not stream_poller.ready.wait(10):
                raise RuntimeError(f"stream poller {stream_poller.source.name} did not start")
        self.schedules = build_schedules(
            functions, self.runtime.invoke, strictness, self.async_invoker.submit, self.clock
        )
        if self.environ.get("LOCAL_SCHEDULES", "1") != "0":
            for schedule in self.schedules:
                if schedule.start():
                    self.say(
                        f"schedule {schedule.function_id}/{schedule.event_name}: "
                        f"{schedule.expression}"
                    )
        self.ready.set()

    def advance_clock(self, seconds: object) -> dict[str, Any]:
        """Move the billing clock forward (ClockError if the amount is not allowed), then run
        every schedule that came due, each once, before answering. Hours pass in an instant
        here, while in AWS a grant or an order written before them would be in every index
        by then: so the due schedules run only once the indexes have caught up with the
        writes made so far (one index lag)."""
        self.clock.advance(seconds)
        ran = []
        due = [schedule for schedule in self.schedules if schedule.due()]
        lag_ms = self.aws.strictness.index_lag_ms if self.aws.strictness else 0.0
        if due and lag_ms:
            time.sleep(lag_ms / 1000)
        for schedule in due:
            result = schedule.run_once()
            ran.append(
                {
                    "schedule": f"{schedule.function_id}/{schedule.event_name}",
                    "function_error": result.function_error,
                }
            )
        return {**self.clock.describe(), "ran": ran}

    def _credentials(self, function_id: str) -> tuple[str, str, str]:
        assert self.iam is not None
        own = self.iam.credentials(function_id)
        return own.access_key_id, own.secret_access_key, own.session_token

    def _lambda_runtimes(self, functions: list[FunctionSpec]) -> dict[str, PreparedRuntime]:
        """Each runtime the functions use, with their layers' dependencies built for it."""
        layers: dict[str, list[Path]] = {}
        for function in functions:
            layers.setdefault(function.runtime, []).extend(function.layer_dirs)
        try:
            return {
                runtime: prepare(self.options.root, runtime, dirs, self.environ, self.say)
                for runtime, dirs in layers.items()
            }
        except RuntimeUnavailable as exc:
            raise TemplateError(str(exc)) from exc

    # ------------------------------------------------------------ control

    def iam_report(self) -> dict[str, Any]:
        return self.iam.report() if self.iam is not None else {"enforced": False}

    def health(self) -> dict[str, Any]:
        template = self.template
        assert template is not None and self.runtime is not None
        return {
            "status": "ok",
            "aws_endpoint": self.aws.endpoint,
            "port": self.port,
            "base_url": f"http://127.0.0.1:{self.port}",
            "functions": sorted(self.runtime.pools),
            "function_status": self.runtime.status(),
            "tables": dict(self.provisioned.tables),
            "queues": dict(self.provisioned.queues),
            "parameters": dict(self.provisioned.parameters),
            "secrets": dict(self.provisioned.secrets),
            "pollers": [f"{p.function_id}/{p.event_name}" for p in self.pollers if p.enabled],
            "streams": dict(self.provisioned.streams),
            "stream_pollers": {
                p.source.name: p.describe() for p in self.stream_pollers if p.enabled
            },
            "topics": dict(self.provisioned.topics),
            "event_buses": dict(self.provisioned.event_buses),
            "event_rules": [rule.describe() for rule in self.event_bridge.rules]
            if self.event_bridge
            else [],
            "schedules": [f"{s.function_id}/{s.event_name}" for s in self.schedules],
            "routes": [f"{r.route_key} -> {r.function}" for r in self.routes],
            "sandbox": sorted(self.sandbox.providers) if self.sandbox else [],
            "outputs": template.outputs(),
            "skipped_resources": sorted(template.skipped),
            "clock": self.clock.describe(),
            "strict": asdict(self.aws.strictness) if self.aws.strictness else {},
        }

    def stats(self) -> dict[str, Any]:
        stats = self.aws.registry.stats()
        stats["invocations"] = self.runtime.invocation_counts() if self.runtime else {}
        stats["pollers"] = {
            f"{p.function_id}/{p.event_name}": vars(p.stats).copy() for p in self.pollers
        }
        stats["streams"] = {p.source.name: vars(p.stats).copy() for p in self.stream_pollers}
        stats["stream_records"] = self.aws.streams.stats() if self.aws.app else {}
        stats["events"] = vars(self.event_bridge.stats).copy() if self.event_bridge else {}
        stats["strict"] = {
            "dynamodb": self.aws.strict_stats(),
            "async_retries": self.async_invoker.retried if self.async_invoker else 0,
            "async_discarded": self.async_invoker.discarded if self.async_invoker else 0,
            "schedule_duplicates": {
                f"{s.function_id}/{s.event_name}": s.duplicates for s in self.schedules
            },
        }
        return stats

    def reset_stats(self) -> None:
        self.aws.registry.reset()
        if self.runtime is not None:
            for pool in self.runtime.pools.values():
                pool.invocations = 0
                pool.errors = 0
        for poller in self.pollers:
            poller.stats.batches = poller.stats.messages = 0
            poller.stats.deleted = poller.stats.failed = 0
            poller.stats.duplicates = poller.stats.held_back = 0
            poller.arranger.duplicates = poller.arranger.held_back = 0
        for stream_poller in self.stream_pollers:
            stream_poller.reset_stats()
        if self.event_bridge is not None:
            self.event_bridge.reset_stats()

    def faults(self) -> dict[str, Any]:
        return {
            "faults": self.aws.registry.list(),
            "pollers": {
                f"{p.function_id}/{p.event_name}": {"die_after_invoke": p.fault.die_after_invoke}
                for p in self.pollers
            },
        }

    def clear_faults(self) -> None:
        self.aws.registry.clear()
        for poller in self.pollers:
            poller.clear_fault()

    def add_poller_fault(self, function_id: str, count: int, event: str | None = None) -> None:
        matching = [
            p
            for p in self.pollers
            if p.function_id == function_id and (event is None or p.event_name == event)
        ]
        if not matching:
            raise ValueError(f"no SQS poller for {function_id}" + (f"/{event}" if event else ""))
        if count < 1:
            raise ValueError("die_after_invoke must be >= 1")
        for poller in matching:
            poller.add_die_after_invoke(count)

    def schedule(self, function_id: str, event_name: str) -> Schedule | None:
        for schedule in self.schedules:
            if schedule.function_id == function_id and schedule.event_name == event_name:
                return schedule
        return None

    # ------------------------------------------------------------ stop

    def stop(self) -> None:
        self.ready.clear()
        for schedule in self.schedules:
            schedule.stop()
        if self.async_invoker is not None:
            self.async_invoker.stop()
        for poller in self.pollers:
            poller.stop()
        for stream_poller in self.stream_pollers:
            stream_poller.stop()
        self.aws.end_waits()
        for poller in self.pollers:
            poller.join(timeout=5)
        for stream_poller in self.stream_pollers:
            stream_poller.join(timeout=5)
        self.gateway.shutdown()
        if self.runtime is not None:
            self.runtime.close()
        self.aws.stop()
