"""What AWS refuses at deploy time, refused at the stack's start.

CloudFormation creates each event source mapping and schedule with Lambda's and
EventBridge's APIs, which validate them; a template that breaks a rule fails to deploy. The
same rules, with the messages those APIs give (quoted where AWS's wording is known), stop
the local stack before it provisions anything:
- an SQS queue's VisibilityTimeout must be at least its function's Timeout;
- a FIFO queue's BatchSize is at most 10 and it takes no batching window;
- a standard queue's BatchSize is 1..10000, and above 10 needs
  MaximumBatchingWindowInSeconds of at least 1 (0..300);
- ScalingConfig.MaximumConcurrency is 2..1000;
- a schedule is rate(N unit) with N a positive integer and the unit singular exactly when N
  is 1 (rate(1 minute), rate(5 minutes)), or cron() with six fields;
- Timeout 1..900, MemorySize 128..10240, EventInvokeConfig's retries 0..2 and event age
  60..21600 seconds;
- an SQS event takes no DestinationConfig (only stream sources have OnFailure);
- a DynamoDB event names the stream of a table with a StreamSpecification, a StartingPosition
  of TRIM_HORIZON or LATEST, BatchSize 1..10000, a batching window of 0..300 s,
  ParallelizationFactor 1..10, MaximumRetryAttempts -1..10000, MaximumRecordAgeInSeconds -1
  or 60..604800, at most five valid FilterCriteria patterns, and an OnFailure destination
  that is an SQS queue or SNS topic;
- an EventBridge rule is on a bus that exists, has a valid EventPattern (or a schedule, only
  on the default bus) and at most five targets.
"""

from __future__ import annotations

import re
from typing import Any

from local.event_patterns import PatternError, compile_pattern
from local.template import (
    EVENT_BUS_TYPE,
    QUEUE_TYPE,
    RULE_TYPE,
    TABLE_TYPE,
    TOPIC_TYPE,
    FunctionSpec,
    Template,
    TemplateError,
)

_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_CRON = re.compile(r"^cron\((.+)\)$")
_AT = re.compile(r"^at\(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\)$")
INVALID_SCHEDULE = "Parameter ScheduleExpression is not valid."


def check(template: Template, functions: list[FunctionSpec]) -> None:
    """Raise TemplateError listing every rule the template breaks."""
    problems: list[str] = []
    for function in functions:
        problems += _function_problems(template, function)
    problems += _rule_problems(template)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise TemplateError(f"the template would not deploy to AWS:\n{listing}")


def _function_problems(template: Template, function: FunctionSpec) -> list[str]:
    name = function.logical_id
    problems: list[str] = []
    if not 1 <= function.timeout <= 900:
        problems.append(
            f"{name}: Timeout {function.timeout}: Member must have value between 1 and 900"
        )
    if not 128 <= function.memory_size <= 10240:
        problems.append(
            f"{name}: MemorySize {function.memory_size}: Member must have value between "
            "128 and 10240"
        )
    invoke_config = template.resolve(
        template.function_properties(name).get("EventInvokeConfig") or {}
    )
    retries = invoke_config.get("MaximumRetryAttempts")
    if retries is not None and not 0 <= int(retries) <= 2:
        problems.append(f"{name}: EventInvokeConfig.MaximumRetryAttempts {retries} is not 0..2")
    age = invoke_config.get("MaximumEventAgeInSeconds")
    if age is not None and not 60 <= int(age) <= 21600:
        problems.append(
            f"{name}: EventInvokeConfig.MaximumEventAgeInSeconds {age} is not 60..21600"
        )
    for event in function.events:
        where = f"{name}.{event.name}"
        if event.type == "SQS":
            problems += [
                f"{where}: {p}" for p in _sqs_problems(template, function, event.properties)
            ]
        elif event.type == "DynamoDB":
            problems += [f"{where}: {p}" for p in _stream_problems(template, event.properties)]
        elif event.type in ("EventBridgeRule", "CloudWatchEvent"):
            props = event.properties
            bus = _bus_name(props.get("EventBusName"))
            if bus not in _bus_names(template):
                problems.append(f"{where}: Event bus {bus} does not exist.")
            problem = _pattern_problem(props.get("Pattern"))
            if problem:
                problems.append(f"{where}: Event pattern is not valid. Reason: {problem}")
        elif event.type in ("Schedule", "ScheduleV2"):
            props = event.properties
            expression = str(props.get("Schedule") or props.get("ScheduleExpression") or "")
            problem = schedule_problem(expression, allow_at=event.type == "ScheduleV2")
            if problem:
                problems.append(f"{where}: {problem}")
    return problems


def _sqs_problems(template: Template, function: FunctionSpec, props: dict[str, Any]) -> list[str]:
    queue_id = template.queue_by_arn(str(props["Queue"]))
    queue = template.resolve(template.resources[queue_id].properties)
    fifo = str(queue.get("FifoQueue", False)).lower() == "true"
    visibility = int(queue.get("VisibilityTimeout", 30))
    batch_size = int(props.get("BatchSize", 10))
    window = props.get("MaximumBatchingWindowInSeconds")
    problems: list[str] = []
    if visibility < function.timeout:
        problems.append(
            f"Invalid request provided: Queue visibility timeout: {visibility} seconds is less "
            f"than Function timeout: {function.timeout} seconds (queue {queue_id})"
        )
    if fifo:
        if not 1 <= batch_size <= 10:
            problems.append(
                f"Invalid request provided: BatchSize {batch_size}: for FIFO queues the "
                f"maximum batch size is 10 (queue {queue_id})"
            )
        if window is not None and float(window) > 0:
            problems.append(
                "Invalid request provided: Batching window is not supported for FIFO queues"
            )
    else:
        if not 1 <= batch_size <= 10000:
            problems.append(
                f"Invalid request provided: BatchSize {batch_size}: Maximum batch size must "
                "be between 1 and 10000 inclusive"
            )
        if window is not None and not 0 <= float(window) <= 300:
            problems.append(
                f"Invalid request provided: MaximumBatchingWindowInSeconds {window} is not "
                "between 0 and 300"
            )
        if batch_size > 10 and (window is None or float(window) < 1):
            problems.append(
                "Invalid request provided: Maximum batch window in seconds must be greater "
                "than 0 if maximum batch size is greater than 10"
            )
    if props.get("DestinationConfig"):
        problems.append(
            "Invalid request provided: Unsupported DestinationConfig parameter for given event "
            "source mapping type. (an SQS event source has no OnFailure: failed messages go to "
            "the queue's RedrivePolicy)"
        )
    concurrency = (props.get("ScalingConfig") or {}).get("MaximumConcurrency")
    if concurrency is not None and not 2 <= int(concurrency) <= 1000:
        problems.append(
            f"Invalid request provided: ScalingConfig.MaximumConcurrency {concurrency} is "
            "not between 2 and 1000"
        )
    return problems


def _stream_arns(template: Template) -> dict[str, str]:
    """Stream ARN -> table logical id, for the tables with a StreamSpecification."""
    arns = {}
    for table in template.of_type(TABLE_TYPE):
        if table.properties.get("StreamSpecification"):
            try:
                arns[str(template.get_att(table.logical_id, "StreamArn"))] = table.logical_id
            except TemplateError:
                continue  # not provisioned (a check before provisioning)
    return arns


def _in_range(props: dict[str, Any], name: str, low: int, high: int, default: int) -> str | None:
    value = props.get(name, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        return f"{name} {value!r} is not an integer"
    if not low <= number <= high:
        return (
            f"1 validation error detected: Value '{number}' at '{name[0].lower()}{name[1:]}' "
            f"failed to satisfy constraint: Member must have value between {low} and {high}"
        )
    return None


def _stream_problems(template: Template, props: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    stream = str(props.get("Stream", ""))
    if stream not in _stream_arns(template):
        problems.append(
            f"Stream {stream!r} is not the stream of a table of this template with a "
            "StreamSpecification (a table without one has no stream)"
        )
    position = props.get("StartingPosition")
    if position not in ("TRIM_HORIZON", "LATEST"):
        problems.append(
            f"StartingPosition {position!r}: a DynamoDB stream event source needs "
            "TRIM_HORIZON or LATEST"
        )
    for name, low, high, default in (
        ("BatchSize", 1, 10000, 100),
        ("MaximumBatchingWindowInSeconds", 0, 300, 0),
        ("ParallelizationFactor", 1, 10, 1),
        ("MaximumRetryAttempts", -1, 10000, -1),
    ):
        problem = _in_range(props, name, low, high, default)
        if problem:
            problems.append(problem)
    age = props.get("MaximumRecordAgeInSeconds", -1)
    try:
        age_ok = int(age) == -1 or 60 <= int(age) <= 604800
    except (TypeError, ValueError):
        age_ok = False
    if not age_ok:
        problems.append(
            f"MaximumRecordAgeInSeconds {age!r}: must be -1 (infinite) or between 60 and 604800"
        )
    unknown = set(props.get("FunctionResponseTypes") or []) - {"ReportBatchItemFailures"}
    if unknown:
        problems.append(f"FunctionResponseTypes {sorted(unknown)}: only ReportBatchItemFailures")
    filters = (props.get("FilterCriteria") or {}).get("Filters") or []
    if len(filters) > 5:
        problems.append(f"FilterCriteria has {len(filters)} filters; at most 5 per event source")
    for item in filters:
        problem = _pattern_problem(item.get("Pattern") if isinstance(item, dict) else None)
        if problem:
            problems.append(f"Invalid filter pattern definition. ({problem})")
    destination = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
    if destination is not None and str(destination) not in _destinations(template):
        problems.append(
            f"DestinationConfig.OnFailure.Destination {destination!r} is not an SQS queue or SNS "
            "topic of this template (the only OnFailure destinations emulated locally)"
        )
    if props.get("TumblingWindowInSeconds"):
        problems.append("TumblingWindowInSeconds is not emulated locally")
    return problems


def _destinations(template: Template) -> set[str]:
    arns = {template.queue_arn(q.logical_id) for q in template.of_type(QUEUE_TYPE)}
    arns |= {template.topic_arn(t.logical_id) for t in template.of_type(TOPIC_TYPE)}
    return arns


def _bus_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "default"
    return value.rsplit("event-bus/", 1)[-1] if value.startswith("arn:") else value


def _bus_names(template: Template) -> set[str]:
    return {"default"} | {
        template.event_bus_name(bus.logical_id) for bus in template.of_type(EVENT_BUS_TYPE)
    }


def _pattern_problem(pattern: Any) -> str | None:
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        return str(exc)
    return None


def _rule_problems(template: Template) -> list[str]:
    problems: list[str] = []
    for rule in template.of_type(RULE_TYPE):
        props = rule.properties
        where = rule.logical_id
        try:
            bus = _bus_name(template.resolve(props.get("EventBusName")))
        except TemplateError as exc:
            problems.append(f"{where}: EventBusName: {exc}")
            continue
        if bus not in _bus_names(template):
            problems.append(f"{where}: Event bus {bus} does not exist.")
        if "EventPattern" in props:
            problem = _pattern_problem(template.resolve(props["EventPattern"]))
            if problem:
                problems.append(f"{where}: Event pattern is not valid. Reason: {problem}")
        elif "ScheduleExpression" in props:
            if bus != "default":
                problems.append(
                    f"{where}: ScheduleExpression is supported only on the default event bus."
                )
        else:
            problems.append(
                f"{where}: Parameter(s) EventPattern or ScheduleExpression must be specified."
            )
        targets = props.get("Targets")
        if isinstance(targets, list) and len(targets) > 5:
            problems.append(
                f"{where}: {len(targets)} targets: The requested resource exceeds the maximum "
                "number allowed. (5 targets per rule)"
            )
    return problems


def schedule_problem(expression: str, allow_at: bool = False) -> str | None:
    """Why EventBridge would refuse this schedule expression, or None."""
    rate = _RATE.match(expression)
    if rate:
        value, unit = int(rate.group(1)), rate.group(2)
        if value < 1:
            return f"{INVALID_SCHEDULE} {expression}: the value must be a positive integer"
        if (value == 1) != (not unit.endswith("s")):
            right = unit.rstrip("s") if value == 1 else unit + ("" if unit.endswith("s") else "s")
            return (
                f"{INVALID_SCHEDULE} {expression}: with a value of {value} the unit is "
                f"{right!r} (rate(1 minute), rate(5 minutes))"
            )
        return None
    cron = _CRON.match(expression)
    if cron:
        fields = cron.group(1).split()
        if len(fields) != 6:
            return f"{INVALID_SCHEDULE} {expression}: cron() takes six fields"
        if "?" not in (fields[2], fields[4]):
            return f"{INVALID_SCHEDULE} {expression}: one of day-of-month and day-of-week must be ?"
        return None
    if allow_at and _AT.match(expression):
        return None
    return f"{INVALID_SCHEDULE} {expression!r} is neither rate(...) nor cron(...)"
