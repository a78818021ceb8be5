"""EventBridge in the local stack: what is put on the buses, and rules that deliver it.

The template's ``AWS::Events::EventBus`` resources exist in the embedded AWS (provisioning),
so PutEvents goes to moto like any call: IAM first (``events:PutEvents`` on each entry's
bus), then moto's own validation and event ids. Each event moto accepted is then:
- kept for ``GET /_local/events`` (the last 10 000; ``DELETE`` clears them), on whatever bus;
- matched against the rules of its bus: ``AWS::Events::Rule`` resources with an
  EventPattern and SAM's ``Type: EventBridgeRule`` (or ``CloudWatchEvent``) function events;
  a matching rule's targets get the event (or its Input, InputPath or InputTransformer
  result): a Lambda function of the template asynchronously (local/async_invoke.py, so
  Lambda's retries apply), an SQS queue of the template by SendMessage. As in AWS, a raw
  rule may only invoke a function that an ``AWS::Lambda::Permission`` lets
  events.amazonaws.com invoke (SAM writes it for its events); without one the event is not
  delivered and the stack says so.
Targets the stack cannot run (API destinations, other services) are named once at start and
counted as undelivered; a target that does not resolve locally (say, a resource switched off
by a Condition) is left out with a warning, so it never breaks the start.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from local.event_patterns import Pattern, PatternError, compile_pattern
from local.template import (
    ACCOUNT_ID,
    EVENT_BUS_TYPE,
    FUNCTION_TYPE,
    PARTITION,
    REGION,
    RULE_TYPE,
    STACK_NAME,
    FunctionSpec,
    Template,
    TemplateError,
)

if TYPE_CHECKING:
    from local.aws import CallInfo

log = logging.getLogger("local.events")

KEPT_EVENTS = 10_000
RULE_EVENT_TYPES = ("EventBridgeRule", "CloudWatchEvent")
PERMISSION_TYPE = "AWS::Lambda::Permission"
_PATH = re.compile(r"^\$((\.[A-Za-z0-9_\-]+)|(\[\d+\]))*$")
_PLACEHOLDER = re.compile(r"<([A-Za-z0-9_.\-]+)>")

Submit = Callable[[str, str, str], None]  # function, payload, request id: an Event invocation


@dataclass(frozen=True)
class Target:
    target_id: str
    arn: str
    function_id: str | None = None  # a function of this template
    queue_url: str | None = None  # a queue of this template
    message_group_id: str | None = None
    input: str | None = None
    input_path: str | None = None
    paths_map: tuple[tuple[str, str], ...] = ()
    input_template: str | None = None
    permitted: bool = True  # EventBridge may invoke the function (a Lambda permission)

    @property
    def kind(self) -> str:
        if self.function_id is not None:
            return "lambda"
        if self.queue_url is not None:
            return "sqs"
        return "not emulated"


@dataclass(frozen=True)
class Rule:
    name: str
    arn: str
    bus: str
    pattern: Pattern
    enabled: bool
    targets: tuple[Target, ...]
    source: str  # the resource or function event it comes from

    def describe(self) -> dict[str, Any]:
        return {
            "rule": self.name,
            "bus": self.bus,
            "from": self.source,
            "enabled": self.enabled,
            "targets": [
                f"{t.target_id}: {t.kind} {t.arn}"
                + ("" if t.permitted else " (no AWS::Lambda::Permission: not delivered)")
                for t in self.targets
            ],
        }


@dataclass
class EventStats:
    put: int = 0
    matched: int = 0  # (event, rule) pairs
    delivered: int = 0  # handed to a target
    undelivered: int = 0  # a target the stack cannot run, or not permitted


@dataclass
class _Kept:
    bus: str
    event: dict[str, Any]
    rules: list[str]
    recorded: str


@dataclass
class EventBridge:
    buses: dict[str, str]  # name -> ARN (the template's and "default")
    rules: list[Rule]
    submit: Submit
    sqs: Any = None  # the stack's own SQS client, for SQS targets
    stats: EventStats = field(default_factory=EventStats)
    _kept: deque[_Kept] = field(default_factory=lambda: deque(maxlen=KEPT_EVENTS))
    _total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------ the embedded AWS's observer

    def observe(self, call: CallInfo, status: str, payload: bytes) -> None:
        """After moto answered: every accepted PutEvents entry is an event on its bus."""
        if call.service != "events" or call.operation != "PutEvents":
            return
        if not status.startswith("200"):
            return
        try:
            request = json.loads(call.body or b"{}")
            answer = json.loads(payload or b"{}")
        except ValueError:
            return
        entries = request.get("Entries") if isinstance(request, dict) else None
        results = answer.get("Entries") if isinstance(answer, dict) else None
        if not isinstance(entries, list) or not isinstance(results, list):
            return
        for entry, result in zip(entries, results, strict=False):
            if isinstance(entry, dict) and isinstance(result, dict) and result.get("EventId"):
                self.put(entry, str(result["EventId"]))

    def put(self, entry: Mapping[str, Any], event_id: str) -> None:
        bus = _bus_name(entry.get("EventBusName"))
        event = {
            "version": "0",
            "id": event_id,
            "detail-type": entry.get("DetailType"),
            "source": entry.get("Source"),
            "account": ACCOUNT_ID,
            "time": _event_time(entry.get("Time")),
            "region": REGION,
            "resources": list(entry.get("Resources") or []),
            "detail": _detail(entry.get("Detail")),
        }
        matched = [
            rule
            for rule in self.rules
            if rule.enabled and rule.bus == bus and rule.pattern.matches(event)
        ]
        with self._lock:
            self._total += 1
            self.stats.put += 1
            self.stats.matched += len(matched)
            self._kept.append(
                _Kept(bus, event, [r.name for r in matched], datetime.now(UTC).isoformat())
            )
        for rule in matched:
            for target in rule.targets:
                self._deliver(rule, target, event)

    def _deliver(self, rule: Rule, target: Target, event: dict[str, Any]) -> None:
        if target.kind == "not emulated":
            self._count_undelivered()
            log.info(
                "rule %s matched event %s; its target %s (%s) is not run locally",
                rule.name,
                event["id"],
                target.target_id,
                target.arn,
            )
            return
        if not target.permitted:
            self._count_undelivered()
            log.warning(
                "rule %s matched event %s, but no AWS::Lambda::Permission lets "
                "events.amazonaws.com invoke %s: not delivered (as in AWS)",
                rule.name,
                event["id"],
                target.function_id,
            )
            return
        try:
            payload = _target_input(target, rule, event)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            self._count_undelivered()
            log.warning("rule %s: target %s: input failed: %s", rule.name, target.target_id, exc)
            return
        with self._lock:
            self.stats.delivered += 1
        if target.function_id is not None:
            self.submit(target.function_id, payload, str(uuid.uuid4()))
        elif target.queue_url is not None and self.sqs is not None:
            extra = {"MessageGroupId": target.message_group_id} if target.message_group_id else {}
            self.sqs.send_message(QueueUrl=target.queue_url, MessageBody=payload, **extra)

    def _count_undelivered(self) -> None:
        with self._lock:
            self.stats.undelivered += 1

    # ------------------------------------------------------------ /_local/events

    def events(
        self,
        limit: int = 100,
        detail_type: str | None = None,
        source: str | None = None,
        bus: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            kept = list(self._kept)
            total = self._total
        chosen = []
        for item in reversed(kept):  # newest first
            if detail_type is not None and item.event["detail-type"] != detail_type:
                continue
            if source is not None and item.event["source"] != source:
                continue
            if bus is not None and item.bus != bus:
                continue
            chosen.append(
                {
                    "bus": item.bus,
                    "event": item.event,
                    "rules": item.rules,
                    "recorded": item.recorded,
                }
            )
            if len(chosen) >= limit:
                break
        return {"events": chosen, "total": total}

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self._total = 0

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = EventStats()

    def describe(self) -> dict[str, Any]:
        return {"buses": dict(self.buses), "rules": [rule.describe() for rule in self.rules]}


# ---------------------------------------------------------------- events


def _bus_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "default"
    return value.rsplit("event-bus/", 1)[-1] if value.startswith("arn:") else value


def _event_time(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(float(value), UTC)
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            moment = datetime.now(UTC)
    else:
        moment = datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _detail(value: Any) -> Any:
    try:
        return json.loads(value) if isinstance(value, str) else {}
    except ValueError:
        return {}


def _path(value: Any, path: str) -> Any:
    for name, index in re.findall(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]", path[1:]):
        if name:
            value = value.get(name) if isinstance(value, Mapping) else None
        elif isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            value = None
    return value


def _target_input(target: Target, rule: Rule, event: dict[str, Any]) -> str:
    if target.input is not None:
        return target.input
    if target.input_path is not None:
        return json.dumps(_path(event, target.input_path))
    if target.input_template is None:
        return json.dumps(event)
    values: dict[str, Any] = {name: _path(event, path) for name, path in target.paths_map}
    values.update(
        {
            "aws.events.rule-arn": rule.arn,
            "aws.events.rule-name": rule.name,
            "aws.events.event.ingestion-time": event["time"],
            "aws.events.event.json": event,
        }
    )
    template = target.input_template
    as_json = template.lstrip().startswith(("{", "["))

    def render(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            return match.group(0)
        value = values[name]
        quoted = match.start() > 0 and template[match.start() - 1] == '"'
        if isinstance(value, str) and (quoted or not as_json):
            return json.dumps(value)[1:-1] if as_json else value
        return json.dumps(value)

    return _PLACEHOLDER.sub(render, template)


# ---------------------------------------------------------------- from the template


def _try(template: Template, value: Any, where: str) -> Any:
    try:
        return template.resolve(value)
    except TemplateError as exc:
        log.warning("%s: left out locally (%s)", where, exc)
        return None


def _permissions(template: Template) -> list[tuple[str, str | None]]:
    """(function logical id, SourceArn or None) that events.amazonaws.com may invoke."""
    granted = []
    for resource in template.of_type(PERMISSION_TYPE):
        props = resource.properties
        principal = _try(template, props.get("Principal"), resource.logical_id)
        if principal != "events.amazonaws.com":
            continue
        function = _try(template, props.get("FunctionName"), resource.logical_id)
        if not isinstance(function, str):
            continue
        name = function.rsplit(":function:", 1)[-1].split(":", 1)[0]
        source = props.get("SourceArn")
        granted.append((name, None if source is None else str(_try(template, source, name))))
    return granted


def _target(
    template: Template,
    spec: Mapping[str, Any],
    where: str,
    rule_arn: str,
    permissions: list[tuple[str, str | None]] | None,
) -> Target | None:
    arn = _try(template, spec.get("Arn"), f"{where}: target {spec.get('Id')!r}")
    if not isinstance(arn, str):
        return None
    target_id = str(spec.get("Id", ""))
    input_value = template.resolve(spec.get("Input"))
    input_path = template.resolve(spec.get("InputPath"))
    transformer = template.resolve(spec.get("InputTransformer")) or {}
    paths = {str(k): str(v) for k, v in (transformer.get("InputPathsMap") or {}).items()}
    for path in ([str(input_path)] if input_path else []) + list(paths.values()):
        if not _PATH.match(path):
            raise TemplateError(f"{where}: target {target_id}: InputPath {path!r} is not valid")
    if isinstance(input_value, (dict, list)):
        input_value = json.dumps(input_value)
    common: dict[str, Any] = {
        "target_id": target_id,
        "arn": arn,
        "input": None if input_value is None else str(input_value),
        "input_path": None if not input_path else str(input_path),
        "paths_map": tuple(paths.items()),
        "input_template": None
        if "InputTemplate" not in transformer
        else str(transformer["InputTemplate"]),
    }
    function_prefix = f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT_ID}:function:"
    if arn.startswith(function_prefix):
        function_id = arn[len(function_prefix) :].split(":", 1)[0]
        resource = template.resources.get(function_id)
        if resource is not None and resource.type == FUNCTION_TYPE:
            permitted = permissions is None or any(
                name == function_id and source in (None, rule_arn) for name, source in permissions
            )
            return Target(function_id=function_id, permitted=permitted, **common)
    if arn.startswith(f"arn:{PARTITION}:sqs:"):
        try:
            queue_id = template.queue_by_arn(arn)
        except TemplateError:
            queue_id = None
        if queue_id is not None:
            group = (template.resolve(spec.get("SqsParameters")) or {}).get("MessageGroupId")
            return Target(
                queue_url=template.queue_url(queue_id),
                message_group_id=None if group is None else str(group),
                **common,
            )
    log.warning(
        "%s: target %s (%s) is not run by the local stack; matching events are only recorded",
        where,
        target_id,
        arn,
    )
    return Target(**common)


def _target_specs(template: Template, value: Any, where: str) -> list[Mapping[str, Any]]:
    """The targets as written; each field is resolved on its own (one may be switched off)."""
    if not isinstance(value, list):
        value = _try(template, value, f"{where}: Targets") or []
    specs = []
    for item in value:
        if isinstance(item, Mapping) and set(item) == {"Fn::If"}:
            item = _try(template, item, f"{where}: a target")
        if isinstance(item, Mapping):
            specs.append(item)
    return specs


def _pattern(template: Template, value: Any, where: str) -> Pattern:
    try:
        return compile_pattern(template.resolve(value))
    except PatternError as exc:
        raise TemplateError(f"{where}: Event pattern is not valid. Reason: {exc}") from None


def _state(value: Any) -> bool:
    return str(value or "ENABLED").upper() != "DISABLED"


def read_rules(template: Template, functions: list[FunctionSpec]) -> list[Rule]:
    """The rules with an EventPattern (schedules are local/pollers.py's)."""
    rules: list[Rule] = []
    permissions = _permissions(template)
    for resource in template.of_type(RULE_TYPE):
        props = resource.properties
        if "EventPattern" not in props:
            if "ScheduleExpression" in props:
                log.warning(
                    "%s: schedule rules outside a function's Schedule events are not run locally",
                    resource.logical_id,
                )
            continue
        arn = template.rule_arn(resource.logical_id)
        targets = [
            _target(template, spec, resource.logical_id, arn, permissions)
            for spec in _target_specs(template, props.get("Targets"), resource.logical_id)
        ]
        rules.append(
            Rule(
                name=template.rule_name(resource.logical_id),
                arn=arn,
                bus=_bus_name(_try(template, props.get("EventBusName"), resource.logical_id)),
                pattern=_pattern(template, props["EventPattern"], resource.logical_id),
                enabled=_state(template.resolve(props.get("State"))),
                targets=tuple(t for t in targets if t is not None),
                source=resource.logical_id,
            )
        )
    for function in functions:
        for event in function.events:
            if event.type not in RULE_EVENT_TYPES:
                continue
            props = event.properties
            where = f"{function.logical_id}.{event.name}"
            name = str(props.get("RuleName") or f"{STACK_NAME}-{function.logical_id}{event.name}")
            bus = _bus_name(props.get("EventBusName"))
            prefix = "" if bus == "default" else f"{bus}/"
            arn = f"arn:{PARTITION}:events:{REGION}:{ACCOUNT_ID}:rule/{prefix}{name}"
            spec: dict[str, Any] = {
                "Id": (props.get("Target") or {}).get("Id")
                or f"{function.logical_id}{event.name}LambdaTarget",
                "Arn": function.arn,
                **{k: props[k] for k in ("Input", "InputPath", "InputTransformer") if k in props},
            }
            target = _target(template, spec, where, arn, None)  # SAM adds the permission
            enabled = _state(props.get("State")) and str(props.get("Enabled", True)).lower() != (
                "false"
            )
            rules.append(
                Rule(
                    name=name,
                    arn=arn,
                    bus=bus,
                    pattern=_pattern(template, props.get("Pattern"), where),
                    enabled=enabled,
                    targets=(target,) if target is not None else (),
                    source=where,
                )
            )
    return rules


def event_buses(template: Template) -> dict[str, str]:
    buses = {"default": template.event_bus_arn("default")}
    for resource in template.of_type(EVENT_BUS_TYPE):
        name = template.event_bus_name(resource.logical_id)
        buses[name] = template.event_bus_arn(name)
    return buses


def build_event_bridge(
    template: Template, functions: list[FunctionSpec], submit: Submit, sqs: Any
) -> EventBridge:
    rules = read_rules(template, functions)
    for rule in rules:
        for target in rule.targets:
            if not target.permitted:
                log.warning(
                    "rule %s: no AWS::Lambda::Permission lets events.amazonaws.com invoke %s "
                    "(with this rule's SourceArn); in AWS its invocations fail, so here matching "
                    "events are not delivered to it",
                    rule.source,
                    target.function_id,
                )
    return EventBridge(buses=event_buses(template), rules=rules, submit=submit, sqs=sqs)
