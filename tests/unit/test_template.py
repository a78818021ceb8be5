"""infra/template.yaml: every topic an alarm publishes to can be published to by CloudWatch.

An SNS topic encrypted with the AWS-managed key (alias/aws/sns) silently drops alarm
notifications: CloudWatch cannot use that key, and its policy cannot be changed. A topic
that alarms publish to must be unencrypted or use a customer-managed key (in this template)
whose policy lets cloudwatch.amazonaws.com Decrypt and GenerateDataKey.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from local.template import load_yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "template.yaml"
ALARM_ACTIONS = ("AlarmActions", "OKActions", "InsufficientDataActions")
CLOUDWATCH = "cloudwatch.amazonaws.com"


def alarm_topics(template: dict[str, Any]) -> set[str]:
    """Logical ids of the topics that the template's alarms notify."""
    resources = template["Resources"]
    topics: set[str] = set()
    for resource in resources.values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        for name in ALARM_ACTIONS:
            for action in resource.get("Properties", {}).get(name, []):
                target = action.get("Ref") if isinstance(action, dict) else None
                if target in resources and resources[target]["Type"] == "AWS::SNS::Topic":
                    topics.add(target)
    return topics


def _key_resource(template: dict[str, Any], key: Any) -> str | None:
    """The logical id of the AWS::KMS::Key a KmsMasterKeyId names (via an alias too)."""
    resources = template["Resources"]
    name = None
    if isinstance(key, dict):
        name = key.get("Ref") or (key.get("Fn::GetAtt") or [None])[0]
    if name not in resources:
        return None
    if resources[name]["Type"] == "AWS::KMS::Alias":
        return _key_resource(template, resources[name]["Properties"].get("TargetKeyId"))
    return name if resources[name]["Type"] == "AWS::KMS::Key" else None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def lets_cloudwatch_publish(key_policy: dict[str, Any]) -> bool:
    allowed: set[str] = set()
    for statement in key_policy.get("Statement", []):
        principal = statement.get("Principal", {})
        services = _as_list(principal.get("Service", [])) if isinstance(principal, dict) else []
        if statement.get("Effect") == "Allow" and CLOUDWATCH in services:
            allowed |= set(_as_list(statement.get("Action", [])))
    generate = {"kms:GenerateDataKey", "kms:GenerateDataKey*"}
    return "kms:Decrypt" in allowed and bool(allowed & generate)


def alarm_topic_problems(template: dict[str, Any]) -> list[str]:
    """Why CloudWatch could not publish to a topic the alarms notify (empty: it can)."""
    problems = []
    for topic in sorted(alarm_topics(template)):
        key = template["Resources"][topic].get("Properties", {}).get("KmsMasterKeyId")
        if key is None:
            continue  # unencrypted: CloudWatch can publish
        if isinstance(key, str) and "alias/aws/" in key:
            problems.append(f"{topic} uses the AWS-managed key {key}")
            continue
        resource = _key_resource(template, key)
        if resource is None:
            problems.append(f"{topic} uses a key this template does not define: {key!r}")
            continue
        policy = template["Resources"][resource]["Properties"].get("KeyPolicy", {})
        if not lets_cloudwatch_publish(policy):
            problems.append(f"{topic}: the policy of {resource} does not let CloudWatch publish")
    return problems


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_yaml(TEMPLATE)


def test_every_alarm_notifies_a_topic_cloudwatch_can_publish_to(template: dict[str, Any]) -> None:
    topics = alarm_topics(template)
    assert topics == {"AlarmTopic"}  # every alarm of the template notifies it
    assert alarm_topic_problems(template) == []
    key = _key_resource(
        template, template["Resources"]["AlarmTopic"]["Properties"]["KmsMasterKeyId"]
    )
    assert key is not None  # encrypted, with a customer-managed key


@pytest.mark.parametrize(
    "managed_key",
    ["alias/aws/sns", "arn:aws:kms:us-east-1:123456789012:alias/aws/sns"],
)
def test_the_aws_managed_key_on_an_alarm_topic_is_rejected(
    template: dict[str, Any], managed_key: str
) -> None:
    changed = copy.deepcopy(template)
    changed["Resources"]["AlarmTopic"]["Properties"]["KmsMasterKeyId"] = managed_key
    assert alarm_topic_problems(changed) == [f"AlarmTopic uses the AWS-managed key {managed_key}"]


def test_a_key_whose_policy_leaves_cloudwatch_out_is_rejected(template: dict[str, Any]) -> None:
    changed = copy.deepcopy(template)
    key = _key_resource(changed, changed["Resources"]["AlarmTopic"]["Properties"]["KmsMasterKeyId"])
    assert key is not None
    statements = changed["Resources"][key]["Properties"]["KeyPolicy"]["Statement"]
    changed["Resources"][key]["Properties"]["KeyPolicy"]["Statement"] = [
        s for s in statements if CLOUDWATCH not in str(s.get("Principal"))
    ]
    assert alarm_topic_problems(changed) == [
        f"AlarmTopic: the policy of {key} does not let CloudWatch publish"
    ]


def test_a_new_alarm_on_another_managed_key_topic_is_rejected(template: dict[str, Any]) -> None:
    changed = copy.deepcopy(template)
    resources = changed["Resources"]
    resources["PagerTopic"] = {
        "Type": "AWS::SNS::Topic",
        "Properties": {"KmsMasterKeyId": "alias/aws/sns"},
    }
    alarm = copy.deepcopy(resources["CreditDLQAlarm"])
    alarm["Properties"]["OKActions"] = [{"Ref": "PagerTopic"}]
    resources["PagerAlarm"] = alarm
    assert alarm_topic_problems(changed) == ["PagerTopic uses the AWS-managed key alias/aws/sns"]
