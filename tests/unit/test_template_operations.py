"""What an operator of the deployed stack can watch: every function alarms on its errors and
throttles, every dead-letter queue alarms, webhook refusal bursts alarm, and the dashboard shows
every business metric the code publishes and every queue."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from billing.metrics import Metric
from billing.payments.providers import METHODS

from local.template import load_yaml
from tests.support.stack import ROOT

TEMPLATE = load_yaml(ROOT / "infra" / "template.yaml")
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]


def of_type(kind: str) -> dict[str, dict[str, Any]]:
    return {name: r.get("Properties", {}) for name, r in RESOURCES.items() if r["Type"] == kind}


ALARMS = of_type("AWS::CloudWatch::Alarm")
FUNCTIONS = of_type("AWS::Serverless::Function")


def alarmed(namespace: str, metric: str, dimension: str) -> set[str]:
    """The resources whose `metric` some alarm watches (by the Ref or GetAtt of a dimension),
    notifying the alarm topic."""
    found: set[str] = set()
    for alarm in ALARMS.values():
        if (alarm.get("Namespace"), alarm.get("MetricName")) != (namespace, metric):
            continue
        if {"Ref": "AlarmTopic"} not in alarm.get("AlarmActions", []):
            continue
        for item in alarm.get("Dimensions", []):
            value = item.get("Value", {})
            if item.get("Name") == dimension and "Ref" in value:
                found.add(value["Ref"])
            elif item.get("Name") == dimension and "Fn::GetAtt" in value:
                found.add(value["Fn::GetAtt"][0])
    return found


@pytest.mark.parametrize("metric", ["Errors", "Throttles"])
def test_every_function_alarms_on_its_errors_and_throttles(metric: str) -> None:
    missing = set(FUNCTIONS) - alarmed("AWS/Lambda", metric, "FunctionName")
    assert not missing, f"functions without a {metric} alarm: {sorted(missing)}"


def dead_letter_queues() -> set[str]:
    queues: set[str] = set()
    for props in of_type("AWS::SQS::Queue").values():
        target = props.get("RedrivePolicy", {}).get("deadLetterTargetArn", {})
        if "Fn::GetAtt" in target:
            queues.add(target["Fn::GetAtt"][0])
    for props in FUNCTIONS.values():
        for event in props.get("Events", {}).values():
            on_failure = event.get("Properties", {}).get("DestinationConfig", {}).get("OnFailure")
            destination = (on_failure or {}).get("Destination", {})
            if "Fn::GetAtt" in destination:
                queues.add(destination["Fn::GetAtt"][0])
    return queues


def test_every_dead_letter_queue_alarms_when_a_message_lands() -> None:
    queues = dead_letter_queues()
    assert {"CreditDLQ", "UsageDLQ"} <= queues
    missing = queues - alarmed("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName")
    assert not missing, f"dead-letter queues without an alarm: {sorted(missing)}"


def test_refused_webhooks_alarm_for_every_provider_and_reason() -> None:
    alarm = ALARMS["WebhooksRefusedAlarm"]
    watched = set()
    for query in alarm["Metrics"]:
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            assert metric["MetricName"] == str(Metric.WEBHOOKS_REFUSED)
            dims = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
            assert dims["service"] == "payment_webhook"
            watched.add((dims["provider"], dims["reason"]))
    assert watched == {(p, r) for p in METHODS for r in ("signature", "malformed")}
    assert {"Ref": "AlarmTopic"} in alarm["AlarmActions"]


def dashboard() -> dict[str, Any]:
    body = RESOURCES["OperationsDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    # What CloudFormation substitutes must name resources of the template (or pseudo ones).
    for name in re.findall(r"\$\{([^}]+)\}", body):
        resource = name.split(".")[0]
        assert resource.startswith("AWS::") or resource in RESOURCES, name
    parsed: dict[str, Any] = json.loads(re.sub(r"\$\{([^}]+)\}", r"\1", body))
    return parsed


def shown(widgets: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """The metric names and queue dimension values the dashboard's widgets plot."""
    names: set[str] = set()
    queues: set[str] = set()
    for widget in widgets:
        for line in widget["properties"]["metrics"]:
            first = line[0]
            if isinstance(first, dict):  # a SEARCH expression
                names.update(re.findall(r'MetricName="([^"]+)"', first["expression"]))
            else:  # [namespace, name, dimension, value, ...]
                names.add(line[1])
                queues.update(
                    v for k, v in zip(line[2::2], line[3::2], strict=False) if k == "QueueName"
                )
    return names, queues


def test_the_dashboard_shows_every_business_metric_and_queue() -> None:
    widgets = dashboard()["widgets"]
    names, queues = shown(widgets)
    assert {str(metric) for metric in Metric} <= names
    assert {f"{queue}.QueueName" for queue in of_type("AWS::SQS::Queue")} <= queues
    assert {"Errors", "Throttles", "ApproximateAgeOfOldestMessage"} <= names
