"""Which actions on which resources an AWS API request needs, the way each service authorizes
it (not the way moto's own IAM mode does: one action per operation on ``*``).

DynamoDB checks every item of a transaction for its own action on its own table
(TransactWriteItems: PutItem, UpdateItem, DeleteItem, ConditionCheckItem; TransactGetItems:
GetItem), a batch for the batch action on each table it names, and a Query or Scan with an
IndexName on the index's ARN. DynamoDB Streams' reads are dynamodb: actions on the stream's
ARN (GetRecords on the stream its shard iterator belongs to). SQS authorizes batch
operations as their single forms, on the queue's ARN. SSM works on parameter ARNs, Secrets
Manager on the secret's ARN, EventBridge's PutEvents on each entry's event bus, SNS's Publish
(and PublishBatch) on the topic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from local.dynamodb_streams import iterator_stream_arn


@dataclass(frozen=True)
class Need:
    """One action on one resource that IAM must allow for the request to go through."""

    action: str
    resource: str


@dataclass(frozen=True)
class ArnBuilder:
    partition: str
    region: str
    account: str
    secret_arn: Callable[[str], str | None]  # name or ARN -> the secret's full ARN, if known

    def table(self, name: str) -> str:
        if name.startswith("arn:"):
            return name
        return f"arn:{self.partition}:dynamodb:{self.region}:{self.account}:table/{name}"

    def queue(self, url_or_path: str) -> str:
        # https://host/<account>/<name> (a queue URL) or /<account>/<name> (a request path)
        parts = [p for p in url_or_path.split("?", 1)[0].split("/") if p]
        if len(parts) < 2:
            return "*"
        account, name = parts[-2], parts[-1]
        return f"arn:{self.partition}:sqs:{self.region}:{account}:{name}"

    def queue_named(self, name: str, account: str | None = None) -> str:
        return f"arn:{self.partition}:sqs:{self.region}:{account or self.account}:{name}"

    def parameter(self, name: str) -> str:
        if name.startswith("arn:"):
            return name
        name = name.split(":", 1)[0]  # "name:3" or "name:label" select a version
        return f"arn:{self.partition}:ssm:{self.region}:{self.account}:parameter/{name.lstrip('/')}"

    def secret(self, secret_id: str) -> str:
        known = self.secret_arn(secret_id)
        if known is not None:
            return known
        if secret_id.startswith("arn:"):
            return secret_id
        prefix = f"arn:{self.partition}:secretsmanager:{self.region}:{self.account}"
        return f"{prefix}:secret:{secret_id}"

    def event_bus(self, name: str) -> str:
        if name.startswith("arn:"):
            return name
        return f"arn:{self.partition}:events:{self.region}:{self.account}:event-bus/{name}"

    def function(self, name: str) -> str:
        if name.startswith("arn:"):
            return name
        return f"arn:{self.partition}:lambda:{self.region}:{self.account}:function:{name}"


# The IAM prefix of each service (DynamoDB Streams' actions are dynamodb:GetRecords, ...).
_PREFIXES = {"dynamodbstreams": "dynamodb"}

# Operations every principal may call without any policy.
_NO_PERMISSION_NEEDED = {("sts", "GetCallerIdentity")}

_TRANSACT_WRITE_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}

_LAMBDA_ACTIONS = {"Invoke": "InvokeFunction"}

_SQS_SINGLE_FORMS = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}


def required(
    service: str, operation: str, params: Mapping[str, Any], path: str, arns: ArnBuilder
) -> list[Need]:
    """Every (action, resource) the request needs; empty if it needs no permission."""
    if (service, operation) in _NO_PERMISSION_NEEDED:
        return []
    if service == "dynamodb":
        return _dynamodb(operation, params, arns)
    if service == "dynamodbstreams":
        return _dynamodb_streams(operation, params, arns)
    if service == "events":
        return _events(operation, params, arns)
    if service == "sns":
        return _sns(operation, params)
    if service == "sqs":
        return _sqs(operation, params, path, arns)
    if service == "ssm":
        return _ssm(operation, params, arns)
    if service == "secretsmanager":
        return _secretsmanager(operation, params, arns)
    if service == "lambda":
        return _lambda(operation, params, arns)
    return [Need(f"{_PREFIXES.get(service, service)}:{operation}", "*")]


def _items(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _dynamodb(operation: str, params: Mapping[str, Any], arns: ArnBuilder) -> list[Need]:
    if operation == "TransactWriteItems":
        needs = []
        for item in _items(params.get("TransactItems")):
            for kind, action in _TRANSACT_WRITE_ACTIONS.items():
                body = item.get(kind)
                if isinstance(body, Mapping):
                    needs.append(Need(f"dynamodb:{action}", arns.table(str(body.get("TableName")))))
        return needs
    if operation == "TransactGetItems":
        return [
            Need("dynamodb:GetItem", arns.table(str(item["Get"].get("TableName"))))
            for item in _items(params.get("TransactItems"))
            if isinstance(item.get("Get"), Mapping)
        ]
    if operation in ("BatchGetItem", "BatchWriteItem"):
        tables = params.get("RequestItems")
        names = list(tables) if isinstance(tables, Mapping) else []
        return [Need(f"dynamodb:{operation}", arns.table(str(name))) for name in names]
    table = params.get("TableName")
    if isinstance(table, str):
        resource = arns.table(table)
        index = params.get("IndexName")
        if isinstance(index, str) and operation in ("Query", "Scan"):
            resource = f"{resource}/index/{index}"
        return [Need(f"dynamodb:{operation}", resource)]
    for key in ("ResourceArn", "TableArn", "StreamArn"):
        if isinstance(params.get(key), str):
            return [Need(f"dynamodb:{operation}", str(params[key]))]
    return [Need(f"dynamodb:{operation}", "*")]


def _dynamodb_streams(operation: str, params: Mapping[str, Any], arns: ArnBuilder) -> list[Need]:
    action = f"dynamodb:{operation}"
    if operation == "GetRecords":
        return [Need(action, iterator_stream_arn(params.get("ShardIterator")) or "*")]
    if operation == "ListStreams":
        table = params.get("TableName")
        if isinstance(table, str) and table:
            return [Need(action, f"{arns.table(table)}/stream/*")]
        return [Need(action, "*")]
    return [Need(action, str(params.get("StreamArn") or "*"))]


def _events(operation: str, params: Mapping[str, Any], arns: ArnBuilder) -> list[Need]:
    action = f"events:{operation}"
    if operation == "PutEvents":
        buses: list[str] = []
        for entry in _items(params.get("Entries")):
            named = entry.get("EventBusName")
            bus = arns.event_bus(named if isinstance(named, str) and named else "default")
            if bus not in buses:
                buses.append(bus)
        return [Need(action, bus) for bus in buses] or [Need(action, arns.event_bus("default"))]
    named = params.get("EventBusName")
    if isinstance(named, str) and named:
        return [Need(action, arns.event_bus(named))]
    return [Need(action, "*")]


def _sns(operation: str, params: Mapping[str, Any]) -> list[Need]:
    action = "sns:Publish" if operation == "PublishBatch" else f"sns:{operation}"
    for key in ("TopicArn", "TargetArn", "ResourceArn"):
        value = params.get(key)
        if isinstance(value, str) and value:
            return [Need(action, value)]
    return [Need(action, "*")]


def _sqs(operation: str, params: Mapping[str, Any], path: str, arns: ArnBuilder) -> list[Need]:
    action = f"sqs:{_SQS_SINGLE_FORMS.get(operation, operation)}"
    url = params.get("QueueUrl")
    if isinstance(url, str) and url:
        return [Need(action, arns.queue(url))]
    name = params.get("QueueName")
    if isinstance(name, str) and name:
        owner = params.get("QueueOwnerAWSAccountId")
        return [Need(action, arns.queue_named(name, owner if isinstance(owner, str) else None))]
    if path.strip("/").count("/") == 1:  # the query protocol's /<account>/<name> form
        return [Need(action, arns.queue(path))]
    return [Need(action, "*")]


def _ssm(operation: str, params: Mapping[str, Any], arns: ArnBuilder) -> list[Need]:
    action = f"ssm:{operation}"
    names = params.get("Names")
    if isinstance(names, list):
        return [Need(action, arns.parameter(str(name))) for name in names]
    for key in ("Name", "Path"):
        value = params.get(key)
        if isinstance(value, str) and value:
            return [Need(action, arns.parameter(value))]
    return [Need(action, "*")]


def _secretsmanager(operation: str, params: Mapping[str, Any], arns: ArnBuilder) -> list[Need]:
    action = f"secretsmanager:{operation}"
    if operation == "BatchGetSecretValue":
        ids = params.get("SecretIdList")
        each = [str(i) for i in ids] if isinstance(ids, list) else []
        return [Need(action, "*")] + [
            Need("secretsmanager:GetSecretValue", arns.secret(i)) for i in each
        ]
    for key in ("SecretId", "Name"):
        value = params.get(key)
        if isinstance(value, str) and value:
            return [Need(action, arns.secret(value))]
    return [Need(action, "*")]


def _lambda(operation: str, params: Mapping[str, Any], arns: ArnBuilder) -> list[Need]:
    action = f"lambda:{_LAMBDA_ACTIONS.get(operation, operation)}"
    name = params.get("FunctionName")
    return [Need(action, arns.function(name) if isinstance(name, str) and name else "*")]
