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
  60..21600 seconds.
"""

from __future__ import annotations

import re
from typing import Any

from local.template import FunctionSpec, Template, TemplateError

_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
_CRON = re.compile(r"^cron\((.+)\)$")
_AT = re.compile(r"^at\(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\)$")
INVALID_SCHEDULE = "Parameter ScheduleExpression is not valid."


def check(template: Template, functions: list[FunctionSpec]) -> None:
    """Raise TemplateError listing every rule the template breaks."""
    problems: list[str] = []
    for function in functions:
        problems += _function_problems(template, function)
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
    concurrency = (props.get("ScalingConfig") or {}).get("MaximumConcurrency")
    if concurrency is not None and not 2 <= int(concurrency) <= 1000:
        problems.append(
            f"Invalid request provided: ScalingConfig.MaximumConcurrency {concurrency} is "
            "not between 2 and 1000"
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
