"""Functions' roles from the real SAM transform (local/iam/roles.py), resolved to local ARNs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from local.iam.policy import Decision, evaluate
from local.iam.roles import FunctionRole, function_roles
from local.template import Template, TemplateError
from tests.support.stack import ROOT, template_copy

FIXTURE = ROOT / "tests" / "fixtures" / "iam" / "template.yaml"
ARN = "arn:aws:{service}:us-east-1:123456789012:{resource}"


def roles_of(path: Path) -> dict[str, FunctionRole]:
    template = Template(path, {"JwtIssuer": "http://127.0.0.1:1/_local", "JwtAudience": "x"})
    template.aws_endpoint = "http://127.0.0.1:1"
    for secret in template.of_type("AWS::SecretsManager::Secret"):
        name = template.secret_name(secret.logical_id)
        template.set_physical(
            secret.logical_id,
            Ref=ARN.format(service="secretsmanager", resource=f"secret:{name}-AbCdEf"),
        )
    return function_roles(template)


def decide(role: FunctionRole, action: str, resource: str) -> Decision:
    return evaluate(role.policies, action, resource)


def test_sam_policy_templates_and_what_sam_adds_are_expanded() -> None:
    roles = roles_of(FIXTURE)
    probe = roles["ProbeFunction"]
    assert probe.role_name == "quota-local-ProbeFunctionRole"
    read_table = ARN.format(service="dynamodb", resource="table/quota-local-ReadTable")
    # DynamoDBReadPolicy: the table and its indexes, reads only
    assert decide(probe, "dynamodb:Scan", read_table) is Decision.ALLOW
    assert decide(probe, "dynamodb:Query", f"{read_table}/index/by_kind") is Decision.ALLOW
    assert decide(probe, "dynamodb:PutItem", read_table) is Decision.IMPLICIT_DENY
    # SQSSendMessagePolicy and SSMParameterReadPolicy
    queue = ARN.format(service="sqs", resource="quota-local-ProbeQueue")
    assert decide(probe, "sqs:SendMessage", queue) is Decision.ALLOW
    parameter = ARN.format(service="ssm", resource="parameter/quota-local/iam-probe")
    assert decide(probe, "ssm:GetParameter", parameter) is Decision.ALLOW
    # the basic execution role SAM attaches to every function
    assert decide(probe, "logs:PutLogEvents", "*") is Decision.ALLOW
    # an SQS event source adds the poller's permissions; the template's Deny still wins
    worker = roles["DeleteDeniedWorker"]
    denied_queue = ARN.format(service="sqs", resource="quota-local-DeleteDeniedQueue")
    assert decide(worker, "sqs:ReceiveMessage", denied_queue) is Decision.ALLOW
    assert decide(worker, "sqs:DeleteMessage", denied_queue) is Decision.EXPLICIT_DENY
    assert decide(probe, "sqs:ReceiveMessage", queue) is Decision.IMPLICIT_DENY


def test_tracing_adds_the_x_ray_policy_on_the_real_template() -> None:
    roles = roles_of(ROOT / "infra" / "template.yaml")
    for role in roles.values():
        assert decide(role, "xray:PutTraceSegments", "*") is Decision.ALLOW
    credit = roles["CreditPaymentFunction"]
    credit_queue = ARN.format(service="sqs", resource="quota-local-CreditQueue.fifo")
    assert decide(credit, "sqs:DeleteMessage", credit_queue) is Decision.ALLOW
    assert decide(roles["AccountFunction"], "sqs:DeleteMessage", credit_queue) is (
        Decision.IMPLICIT_DENY
    )


def _unknown_managed_policy(document: dict[str, Any]) -> None:
    function = document["Resources"]["TargetFunction"]["Properties"]
    function["Policies"] = ["AmazonDynamoDBFullAccess"]


def test_a_managed_policy_without_a_document_is_a_clear_error() -> None:
    path = template_copy("iam-unknown-managed", _unknown_managed_policy, FIXTURE)
    with pytest.raises(TemplateError, match="AmazonDynamoDBFullAccess"):
        roles_of(path)


def _role_from_elsewhere(document: dict[str, Any]) -> None:
    function = document["Resources"]["TargetFunction"]["Properties"]
    function["Role"] = "arn:aws:iam::123456789012:role/made-elsewhere"


def test_a_role_outside_the_template_is_a_clear_error() -> None:
    path = template_copy("iam-outside-role", _role_from_elsewhere, FIXTURE)
    with pytest.raises(TemplateError, match="TargetFunction: its Role"):
        roles_of(path)
