"""The local stack's IAM evaluator (local/iam/policy.py) and what each AWS request needs
(local/iam/requests.py), table-driven."""

# One case per line, so that the tables read as tables.
# ruff: noqa: E501

from __future__ import annotations

from typing import Any

import pytest

from local.iam.policy import Decision, Policy, PolicyError, authorize, evaluate
from local.iam.requests import ArnBuilder, Need, required

TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders"
OTHER = "arn:aws:dynamodb:us-east-1:123456789012:table/Other"
QUEUE = "arn:aws:sqs:us-east-1:123456789012:jobs"


def policy(*statements: dict[str, Any]) -> Policy:
    return Policy.parse("test", {"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


A, D, N = Decision.ALLOW, Decision.EXPLICIT_DENY, Decision.IMPLICIT_DENY

CASES: list[tuple[str, list[dict[str, Any]], str, str, Decision]] = [
    ("nothing allows", [], "dynamodb:GetItem", TABLE, N),
    ("exact action and resource", [allow("dynamodb:GetItem", TABLE)], "dynamodb:GetItem", TABLE, A),
    ("other action", [allow("dynamodb:GetItem", TABLE)], "dynamodb:PutItem", TABLE, N),
    ("other resource", [allow("dynamodb:GetItem", TABLE)], "dynamodb:GetItem", OTHER, N),
    ("action case", [allow("DynamoDB:getitem", TABLE)], "dynamodb:GetItem", TABLE, A),
    ("resource case", [allow("dynamodb:GetItem", TABLE.lower())], "dynamodb:GetItem", TABLE, N),
    ("action list", [allow(["sqs:SendMessage", "dynamodb:GetItem"], TABLE)], "dynamodb:GetItem", TABLE, A),
    ("resource list", [allow("dynamodb:GetItem", [OTHER, TABLE])], "dynamodb:GetItem", TABLE, A),
    ("star action", [allow("*", TABLE)], "sqs:SendMessage", TABLE, A),
    ("service star", [allow("dynamodb:*", TABLE)], "dynamodb:DeleteItem", TABLE, A),
    ("service star, other service", [allow("dynamodb:*")], "sqs:SendMessage", QUEUE, N),
    ("prefix star", [allow("dynamodb:Get*", TABLE)], "dynamodb:GetItem", TABLE, A),
    ("prefix star misses", [allow("dynamodb:Get*", TABLE)], "dynamodb:BatchGetItem", TABLE, N),
    ("question mark", [allow("sqs:?eceiveMessage", QUEUE)], "sqs:ReceiveMessage", QUEUE, A),
    ("question mark is one char", [allow("dynamodb:?Item", TABLE)], "dynamodb:GetItem", TABLE, N),
    ("resource star", [allow("dynamodb:GetItem", "*")], "dynamodb:GetItem", TABLE, A),
    ("index under table star", [allow("dynamodb:Query", f"{TABLE}/index/*")], "dynamodb:Query", f"{TABLE}/index/by_user", A),
    ("table grant is not the index", [allow("dynamodb:Query", TABLE)], "dynamodb:Query", f"{TABLE}/index/by_user", N),
    ("index grant is not the table", [allow("dynamodb:Query", f"{TABLE}/index/*")], "dynamodb:Query", TABLE, N),
    ("region star", [allow("sqs:SendMessage", "arn:aws:sqs:*:123456789012:jobs")], "sqs:SendMessage", QUEUE, A),
    ("a star ending its segment expands past colons", [allow("sqs:SendMessage", "arn:aws:sqs:*:jobs")], "sqs:SendMessage", QUEUE, A),
    ("a star inside its segment stays in it", [allow("sqs:SendMessage", "arn:aws:sqs:u*1:jobs")], "sqs:SendMessage", "arn:aws:sqs:us-east-1:123456789011:jobs", N),
    ("a star inside its segment matches in it", [allow("sqs:SendMessage", "arn:aws:sqs:u*1:123456789012:jobs")], "sqs:SendMessage", QUEUE, A),
    ("star in the resource part spans slashes", [allow("ssm:GetParameter", "arn:aws:ssm:us-east-1:1:parameter/app/*")], "ssm:GetParameter", "arn:aws:ssm:us-east-1:1:parameter/app/x/y", A),
    ("literal star variable", [allow("ssm:GetParameter", "arn:aws:ssm:us-east-1:1:parameter/a${*}b")], "ssm:GetParameter", "arn:aws:ssm:us-east-1:1:parameter/a*b", A),
    ("literal star variable is no wildcard", [allow("ssm:GetParameter", "arn:aws:ssm:us-east-1:1:parameter/a${*}b")], "ssm:GetParameter", "arn:aws:ssm:us-east-1:1:parameter/axb", N),
    ("context variable never matches", [allow("ssm:GetParameter", "arn:aws:ssm:us-east-1:1:parameter/${aws:username}")], "ssm:GetParameter", "arn:aws:ssm:us-east-1:1:parameter/bob", N),
    ("deny wins over allow", [allow("dynamodb:*", TABLE), deny("dynamodb:DeleteItem", TABLE)], "dynamodb:DeleteItem", TABLE, D),
    ("deny elsewhere leaves allow", [allow("dynamodb:*", TABLE), deny("dynamodb:DeleteItem", OTHER)], "dynamodb:DeleteItem", TABLE, A),
    ("deny alone", [deny("dynamodb:DeleteItem", TABLE)], "dynamodb:DeleteItem", TABLE, D),
    ("deny in any order", [deny("dynamodb:*", "*"), allow("dynamodb:GetItem", TABLE)], "dynamodb:GetItem", TABLE, D),
    ("not action allows the rest", [{"Effect": "Allow", "NotAction": "dynamodb:DeleteItem", "Resource": TABLE}], "dynamodb:PutItem", TABLE, A),
    ("not action excludes its own", [{"Effect": "Allow", "NotAction": "dynamodb:DeleteItem", "Resource": TABLE}], "dynamodb:DeleteItem", TABLE, N),
    ("not action with wildcards", [{"Effect": "Allow", "NotAction": ["dynamodb:Delete*", "sqs:*"], "Resource": "*"}], "sqs:SendMessage", QUEUE, N),
    ("deny not action", [allow("*"), {"Effect": "Deny", "NotAction": "dynamodb:GetItem", "Resource": "*"}], "dynamodb:PutItem", TABLE, D),
    ("deny not action spares its own", [allow("*"), {"Effect": "Deny", "NotAction": "dynamodb:GetItem", "Resource": "*"}], "dynamodb:GetItem", TABLE, A),
    ("not resource allows others", [{"Effect": "Allow", "Action": "dynamodb:GetItem", "NotResource": OTHER}], "dynamodb:GetItem", TABLE, A),
    ("not resource excludes its own", [{"Effect": "Allow", "Action": "dynamodb:GetItem", "NotResource": OTHER}], "dynamodb:GetItem", OTHER, N),
    ("deny not resource", [allow("dynamodb:GetItem"), {"Effect": "Deny", "Action": "dynamodb:*", "NotResource": TABLE}], "dynamodb:GetItem", OTHER, D),
    ("allow with a condition never applies", [allow("dynamodb:GetItem", TABLE, Condition={"Bool": {"aws:SecureTransport": "true"}})], "dynamodb:GetItem", TABLE, N),
    ("deny with a condition never applies", [allow("dynamodb:GetItem", TABLE), deny("dynamodb:GetItem", TABLE, Condition={"StringEquals": {"aws:RequestedRegion": "us-east-1"}})], "dynamodb:GetItem", TABLE, A),
]  # fmt: skip


@pytest.mark.parametrize(
    ("statements", "action", "resource", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_evaluate(
    statements: list[dict[str, Any]], action: str, resource: str, expected: Decision
) -> None:
    policies = [policy(*statements)] if statements else []
    assert evaluate(policies, action, resource) is expected


def test_statements_across_several_policies_combine() -> None:
    policies = [policy(allow("dynamodb:*", TABLE)), policy(deny("dynamodb:DeleteItem", TABLE))]
    assert evaluate(policies, "dynamodb:PutItem", TABLE) is A
    assert evaluate(policies, "dynamodb:DeleteItem", TABLE) is D


BOUNDARY_CASES: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]], Decision, bool]] = [
    ("both allow", [allow("dynamodb:GetItem", TABLE)], [allow("dynamodb:*")], A, False),
    ("boundary does not allow", [allow("dynamodb:GetItem", TABLE)], [allow("sqs:*")], N, True),
    ("boundary grants nothing by itself", [], [allow("dynamodb:*")], N, False),
    ("boundary denies", [allow("dynamodb:GetItem", TABLE)], [allow("*"), deny("dynamodb:GetItem")], D, True),
    ("identity denies", [deny("dynamodb:GetItem")], [allow("*")], D, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("identity", "boundary", "expected", "by_boundary"),
    [case[1:] for case in BOUNDARY_CASES],
    ids=[case[0] for case in BOUNDARY_CASES],
)
def test_permissions_boundary(
    identity: list[dict[str, Any]],
    boundary: list[dict[str, Any]],
    expected: Decision,
    by_boundary: bool,
) -> None:
    policies = [policy(*identity)] if identity else []
    verdict = authorize(policies, [policy(*boundary)], "dynamodb:GetItem", TABLE)
    assert (verdict.decision, verdict.by_boundary) == (expected, by_boundary)


INVALID: list[tuple[str, Any]] = [
    ("no statement", {"Version": "2012-10-17"}),
    ("bad effect", {"Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}]}),
    ("action and not action", {"Statement": [{"Effect": "Allow", "Action": "*", "NotAction": "s:x", "Resource": "*"}]}),
    ("no action", {"Statement": [{"Effect": "Allow", "Resource": "*"}]}),
    ("no resource", {"Statement": [{"Effect": "Allow", "Action": "*"}]}),
    ("empty action list", {"Statement": [{"Effect": "Allow", "Action": [], "Resource": "*"}]}),
    ("a principal", {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}]}),
    ("unknown element", {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Actions": "x"}]}),
    ("not an object", {"Statement": ["Allow *"]}),
]  # fmt: skip


@pytest.mark.parametrize("document", [case[1] for case in INVALID], ids=[c[0] for c in INVALID])
def test_documents_iam_would_refuse_are_refused(document: Any) -> None:
    with pytest.raises(PolicyError):
        Policy.parse("bad", document)


# ---------------------------------------------------------------- what requests need

SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:keys-AbCdEf"
ARNS = ArnBuilder(
    "aws",
    "us-east-1",
    "123456789012",
    lambda secret_id: SECRET if secret_id in ("keys", SECRET) else None,
)
Q_URL = "http://127.0.0.1:5000/123456789012/jobs"


def t(name: str) -> str:
    return f"arn:aws:dynamodb:us-east-1:123456789012:table/{name}"


STREAM = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/2024-01-01T00:00:00.000"
BUS = "arn:aws:events:us-east-1:123456789012:event-bus/billing"
TOPIC = "arn:aws:sns:us-east-1:123456789012:alerts"

REQUESTS: list[tuple[str, str, str, dict[str, Any], list[Need]]] = [
    ("get item", "dynamodb", "GetItem", {"TableName": "Orders"}, [Need("dynamodb:GetItem", t("Orders"))]),
    ("table given as an ARN", "dynamodb", "PutItem", {"TableName": t("Orders")}, [Need("dynamodb:PutItem", t("Orders"))]),
    ("query on the table", "dynamodb", "Query", {"TableName": "Orders"}, [Need("dynamodb:Query", t("Orders"))]),
    ("query on an index", "dynamodb", "Query", {"TableName": "Orders", "IndexName": "by_user"}, [Need("dynamodb:Query", t("Orders") + "/index/by_user")]),
    ("scan on an index", "dynamodb", "Scan", {"TableName": "Orders", "IndexName": "by_user"}, [Need("dynamodb:Scan", t("Orders") + "/index/by_user")]),
    ("transact write: each item its action", "dynamodb", "TransactWriteItems", {"TransactItems": [
        {"Put": {"TableName": "A"}}, {"Update": {"TableName": "B"}},
        {"Delete": {"TableName": "C"}}, {"ConditionCheck": {"TableName": "A"}},
    ]}, [Need("dynamodb:PutItem", t("A")), Need("dynamodb:UpdateItem", t("B")),
         Need("dynamodb:DeleteItem", t("C")), Need("dynamodb:ConditionCheckItem", t("A"))]),
    ("transact get: get item each", "dynamodb", "TransactGetItems", {"TransactItems": [
        {"Get": {"TableName": "A"}}, {"Get": {"TableName": "B"}},
    ]}, [Need("dynamodb:GetItem", t("A")), Need("dynamodb:GetItem", t("B"))]),
    ("batch get: every table", "dynamodb", "BatchGetItem", {"RequestItems": {"A": {}, "B": {}}},
     [Need("dynamodb:BatchGetItem", t("A")), Need("dynamodb:BatchGetItem", t("B"))]),
    ("batch write: every table", "dynamodb", "BatchWriteItem", {"RequestItems": {"A": [], "B": []}},
     [Need("dynamodb:BatchWriteItem", t("A")), Need("dynamodb:BatchWriteItem", t("B"))]),
    ("list tables", "dynamodb", "ListTables", {}, [Need("dynamodb:ListTables", "*")]),
    ("sqs send", "sqs", "SendMessage", {"QueueUrl": Q_URL}, [Need("sqs:SendMessage", QUEUE)]),
    ("sqs batch as its single form", "sqs", "SendMessageBatch", {"QueueUrl": Q_URL}, [Need("sqs:SendMessage", QUEUE)]),
    ("sqs delete batch", "sqs", "DeleteMessageBatch", {"QueueUrl": Q_URL}, [Need("sqs:DeleteMessage", QUEUE)]),
    ("sqs queue url by name", "sqs", "GetQueueUrl", {"QueueName": "jobs"}, [Need("sqs:GetQueueUrl", QUEUE)]),
    ("ssm parameter with a path", "ssm", "GetParameter", {"Name": "/app/settings"},
     [Need("ssm:GetParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/app/settings")]),
    ("ssm parameter without a slash", "ssm", "GetParameter", {"Name": "flat:3"},
     [Need("ssm:GetParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/flat")]),
    ("ssm parameters each", "ssm", "GetParameters", {"Names": ["/a", "b"]},
     [Need("ssm:GetParameters", "arn:aws:ssm:us-east-1:123456789012:parameter/a"),
      Need("ssm:GetParameters", "arn:aws:ssm:us-east-1:123456789012:parameter/b")]),
    ("secret by name: its full ARN", "secretsmanager", "GetSecretValue", {"SecretId": "keys"},
     [Need("secretsmanager:GetSecretValue", SECRET)]),
    ("secret by ARN", "secretsmanager", "GetSecretValue", {"SecretId": SECRET},
     [Need("secretsmanager:GetSecretValue", SECRET)]),
    ("lambda invoke", "lambda", "Invoke", {"FunctionName": "Meter"},
     [Need("lambda:InvokeFunction", "arn:aws:lambda:us-east-1:123456789012:function:Meter")]),
    ("stream described on its ARN", "dynamodbstreams", "DescribeStream", {"StreamArn": STREAM},
     [Need("dynamodb:DescribeStream", STREAM)]),
    ("stream records on the iterator's stream", "dynamodbstreams", "GetRecords", {"ShardIterator": f"{STREAM}|1|e30="},
     [Need("dynamodb:GetRecords", STREAM)]),
    ("stream records, foreign iterator", "dynamodbstreams", "GetRecords", {"ShardIterator": "opaque"},
     [Need("dynamodb:GetRecords", "*")]),
    ("streams of a table", "dynamodbstreams", "ListStreams", {"TableName": "Orders"},
     [Need("dynamodb:ListStreams", t("Orders") + "/stream/*")]),
    ("put events: each entry's bus once", "events", "PutEvents", {"Entries": [
        {"EventBusName": "billing"}, {"EventBusName": BUS}, {}]},
     [Need("events:PutEvents", BUS), Need("events:PutEvents", "arn:aws:events:us-east-1:123456789012:event-bus/default")]),
    ("sns publish batch as publish", "sns", "PublishBatch", {"TopicArn": TOPIC}, [Need("sns:Publish", TOPIC)]),
    ("caller identity needs nothing", "sts", "GetCallerIdentity", {}, []),
    ("other services: the operation on *", "xray", "PutTraceSegments", {}, [Need("xray:PutTraceSegments", "*")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("service", "operation", "params", "needs"),
    [case[1:] for case in REQUESTS],
    ids=[case[0] for case in REQUESTS],
)
def test_what_a_request_needs(
    service: str, operation: str, params: dict[str, Any], needs: list[Need]
) -> None:
    assert required(service, operation, params, "/", ARNS) == needs


def test_query_protocol_sqs_names_the_queue_in_its_path() -> None:
    assert required("sqs", "SendMessage", {}, "/123456789012/jobs", ARNS) == [
        Need("sqs:SendMessage", QUEUE)
    ]
