"""IAM on the local stack: each function calls the embedded AWS with its own role, exactly as
the SAM transform of its template gives it, and anything outside it is refused with the
service's AccessDenied before anything is written.

Most tests run a probe function (tests/fixtures/iam/) through the Lambda Invoke API: it makes
the AWS call it is told to with its own credentials and reports AWS's answer. The last ones
run the real template, once with one permission the code needs taken away.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.payments import UNIT, checkout, sandbox_event, wait_status
from tests.support.stack import ROOT, LocalStack, free_port, template_copy, wait_for

FIXTURE = ROOT / "tests" / "fixtures" / "iam" / "template.yaml"
ACCOUNT = "123456789012"
PROBE = f"arn:aws:sts::{ACCOUNT}:assumed-role/quota-local-ProbeFunctionRole/ProbeFunction"


@pytest.fixture(scope="module")
def fx() -> Iterator[LocalStack]:
    # Refused on purpose: the probes, the target (it may not write GrantedTable) and the two
    # workers; nothing else may be.
    refused = {"ProbeFunction", "TargetFunction", "DeleteDeniedWorker", "ReceiveDeniedWorker"}
    stack = LocalStack("iam", expect_access_denied=refused)
    stack.start(FIXTURE, env={"LOCAL_SCHEDULES": "0", "LOCAL_MAX_INSTANCES": "4"})
    try:
        yield stack
    finally:
        stack.stop()


def probe(
    stack: LocalStack, service: str, method: str, function: str = "ProbeFunction", **params: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {"service": service, "method": method, "params": params}
    if service == "lambda":
        event["endpoint_url"] = stack.base_url
    result: dict[str, Any] = stack.invoke(function, event)
    return result


def table(stack: LocalStack, logical_id: str) -> str:
    return stack.table_name(logical_id)


def table_arn(stack: LocalStack, logical_id: str) -> str:
    return f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/{table(stack, logical_id)}"


def not_allowed(action: str, resource: str, principal: str = PROBE) -> str:
    return (
        f"User: {principal} is not authorized to perform: {action} on resource: {resource} "
        f"because no identity-based policy allows the {action} action"
    )


def item(key: str, **attributes: str) -> dict[str, Any]:
    return {"pk": {"S": key}, **{name: {"S": value} for name, value in attributes.items()}}


def stored(stack: LocalStack, logical_id: str, key: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = (
        stack.boto3_client("dynamodb")
        .get_item(TableName=table(stack, logical_id), Key={"pk": {"S": key}}, ConsistentRead=True)
        .get("Item")
    )
    return found


def denials(stack: LocalStack, function: str) -> list[dict[str, Any]]:
    return [d for d in stack.iam()["denials"] if d["function"] == function]


def assert_denied(result: dict[str, Any], code: str = "AccessDeniedException") -> None:
    assert result["ok"] is False, result
    assert result["code"] == code, result


# ---------------------------------------------------------------- DynamoDB


def test_a_table_without_a_policy_is_refused_and_nothing_is_written(fx: LocalStack) -> None:
    key = uuid.uuid4().hex
    result = probe(fx, "dynamodb", "put_item", TableName=table(fx, "OtherTable"), Item=item(key))
    assert_denied(result)
    assert result["status"] == 400
    arn = table_arn(fx, "OtherTable")
    assert result["message"] == not_allowed("dynamodb:PutItem", arn)
    assert stored(fx, "OtherTable", key) is None

    recorded = [d for d in denials(fx, "ProbeFunction") if d["resource"] == arn]
    assert recorded and recorded[-1]["action"] == "dynamodb:PutItem"
    assert recorded[-1]["operation"] == "dynamodb.PutItem" and recorded[-1]["explicit"] is False
    assert recorded[-1]["time"]
    line = f"IAM AccessDenied: ProbeFunction may not dynamodb:PutItem on {arn}"
    assert line in fx.log_text()


def test_granted_calls_go_through_and_are_counted(fx: LocalStack) -> None:
    before = fx.iam()["functions"]["ProbeFunction"]
    key = uuid.uuid4().hex
    granted = table(fx, "GrantedTable")
    assert probe(fx, "dynamodb", "put_item", TableName=granted, Item=item(key, kind="k"))["ok"]
    got = probe(
        fx, "dynamodb", "get_item", TableName=granted, Key={"pk": {"S": key}}, ConsistentRead=True
    )
    assert got["ok"] and got["response"]["Item"]["kind"] == {"S": "k"}
    after = fx.iam()["functions"]["ProbeFunction"]
    assert after["principal"] == PROBE
    assert after["allowed_calls"] >= before["allowed_calls"] + 2
    for action in ("dynamodb:PutItem", "dynamodb:GetItem"):
        assert after["allowed"][action] >= before["allowed"].get(action, 0) + 1


def test_a_transaction_with_one_item_outside_the_policy_is_refused_whole(fx: LocalStack) -> None:
    inside, outside = uuid.uuid4().hex, uuid.uuid4().hex
    granted, other = table(fx, "GrantedTable"), table(fx, "OtherTable")
    refused = probe(
        fx,
        "dynamodb",
        "transact_write_items",
        TransactItems=[
            {"Put": {"TableName": granted, "Item": item(inside)}},
            {"Put": {"TableName": other, "Item": item(outside)}},
        ],
    )
    assert_denied(refused)
    assert refused["message"] == not_allowed("dynamodb:PutItem", table_arn(fx, "OtherTable"))
    assert stored(fx, "GrantedTable", inside) is None
    assert stored(fx, "OtherTable", outside) is None

    # each item is checked for its own action: the policy has no DeleteItem on GrantedTable
    refused = probe(
        fx,
        "dynamodb",
        "transact_write_items",
        TransactItems=[
            {"Put": {"TableName": granted, "Item": item(inside)}},
            {"Delete": {"TableName": granted, "Key": {"pk": {"S": outside}}}},
        ],
    )
    assert_denied(refused)
    assert refused["message"] == not_allowed("dynamodb:DeleteItem", table_arn(fx, "GrantedTable"))
    assert stored(fx, "GrantedTable", inside) is None

    done = probe(
        fx,
        "dynamodb",
        "transact_write_items",
        TransactItems=[
            {"Put": {"TableName": granted, "Item": item(inside, kind="tx")}},
            {
                "Update": {
                    "TableName": granted,
                    "Key": {"pk": {"S": outside}},
                    "UpdateExpression": "SET kind = :k",
                    "ExpressionAttributeValues": {":k": {"S": "tx"}},
                }
            },
            {
                "ConditionCheck": {
                    "TableName": table(fx, "WildTable"),
                    "Key": {"pk": {"S": inside}},
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
        ],
    )
    assert done["ok"], done
    assert stored(fx, "GrantedTable", inside) == item(inside, kind="tx")
    assert stored(fx, "GrantedTable", outside) == item(outside, kind="tx")


def test_transact_get_items_needs_get_item_on_each_table(fx: LocalStack) -> None:
    granted, read, other = (table(fx, t) for t in ("GrantedTable", "ReadTable", "OtherTable"))
    key = {"pk": {"S": uuid.uuid4().hex}}
    refused = probe(
        fx,
        "dynamodb",
        "transact_get_items",
        TransactItems=[
            {"Get": {"TableName": granted, "Key": key}},
            {"Get": {"TableName": other, "Key": key}},
        ],
    )
    assert_denied(refused)
    assert refused["message"] == not_allowed("dynamodb:GetItem", table_arn(fx, "OtherTable"))
    # ReadTable's GetItem comes from the SAM policy template DynamoDBReadPolicy
    allowed = probe(
        fx,
        "dynamodb",
        "transact_get_items",
        TransactItems=[
            {"Get": {"TableName": granted, "Key": key}},
            {"Get": {"TableName": read, "Key": key}},
        ],
    )
    assert allowed["ok"], allowed


def test_batches_need_the_batch_action_on_every_table_they_name(fx: LocalStack) -> None:
    granted, read, other = (table(fx, t) for t in ("GrantedTable", "ReadTable", "OtherTable"))
    key = uuid.uuid4().hex
    refused = probe(
        fx,
        "dynamodb",
        "batch_get_item",
        RequestItems={
            granted: {"Keys": [{"pk": {"S": key}}]},
            other: {"Keys": [{"pk": {"S": key}}]},
        },
    )
    assert_denied(refused)
    assert refused["message"] == not_allowed("dynamodb:BatchGetItem", table_arn(fx, "OtherTable"))

    # DynamoDBReadPolicy has no BatchWriteItem: nothing of the batch is written
    refused = probe(
        fx,
        "dynamodb",
        "batch_write_item",
        RequestItems={
            granted: [{"PutRequest": {"Item": item(key)}}],
            read: [{"PutRequest": {"Item": item(key)}}],
        },
    )
    assert_denied(refused)
    assert refused["message"] == not_allowed("dynamodb:BatchWriteItem", table_arn(fx, "ReadTable"))
    assert stored(fx, "GrantedTable", key) is None and stored(fx, "ReadTable", key) is None

    written = probe(
        fx,
        "dynamodb",
        "batch_write_item",
        RequestItems={granted: [{"PutRequest": {"Item": item(key)}}]},
    )
    assert written["ok"], written
    assert stored(fx, "GrantedTable", key) == item(key)
    read_back = probe(
        fx,
        "dynamodb",
        "batch_get_item",
        RequestItems={
            granted: {"Keys": [{"pk": {"S": key}}], "ConsistentRead": True},
            read: {"Keys": [{"pk": {"S": key}}], "ConsistentRead": True},
        },
    )
    assert read_back["ok"] and read_back["response"]["Responses"][granted] == [item(key)]


def test_a_query_on_an_index_not_granted_is_refused_though_the_table_is(fx: LocalStack) -> None:
    granted = table(fx, "GrantedTable")
    key = uuid.uuid4().hex
    assert probe(
        fx, "dynamodb", "put_item", TableName=granted, Item=item(key, kind=key, owner=key)
    )["ok"]
    values = {":v": {"S": key}}
    on_table = probe(
        fx,
        "dynamodb",
        "query",
        TableName=granted,
        KeyConditionExpression="pk = :v",
        ExpressionAttributeValues=values,
        ConsistentRead=True,
    )
    assert on_table["ok"] and on_table["response"]["Count"] == 1
    time.sleep(fx.index_lag + 0.2)  # a GSI is never read strongly: wait out its lag
    on_granted_index = probe(
        fx,
        "dynamodb",
        "query",
        TableName=granted,
        IndexName="granted_index",
        KeyConditionExpression="kind = :v",
        ExpressionAttributeValues=values,
    )
    assert on_granted_index["ok"] and on_granted_index["response"]["Count"] == 1
    refused = probe(
        fx,
        "dynamodb",
        "query",
        TableName=granted,
        IndexName="other_index",
        KeyConditionExpression="owner = :v",
        ExpressionAttributeValues=values,
    )
    assert_denied(refused)
    index_arn = f"{table_arn(fx, 'GrantedTable')}/index/other_index"
    assert refused["message"] == not_allowed("dynamodb:Query", index_arn)
    # DynamoDBReadPolicy grants <table>/index/* as SAM writes it
    on_read_index = probe(
        fx,
        "dynamodb",
        "query",
        TableName=table(fx, "ReadTable"),
        IndexName="by_kind",
        KeyConditionExpression="kind = :v",
        ExpressionAttributeValues=values,
    )
    assert on_read_index["ok"], on_read_index


def test_an_explicit_deny_wins_over_a_wildcard_allow(fx: LocalStack) -> None:
    wild = table(fx, "WildTable")
    key = uuid.uuid4().hex
    assert probe(fx, "dynamodb", "put_item", TableName=wild, Item=item(key))["ok"]
    refused = probe(fx, "dynamodb", "delete_item", TableName=wild, Key={"pk": {"S": key}})
    assert_denied(refused)
    arn = table_arn(fx, "WildTable")
    assert refused["message"] == (
        f"User: {PROBE} is not authorized to perform: dynamodb:DeleteItem on resource: {arn} "
        "with an explicit deny in an identity-based policy"
    )
    assert stored(fx, "WildTable", key) == item(key)
    assert any(d["explicit"] and d["resource"] == arn for d in denials(fx, "ProbeFunction"))


# ---------------------------------------------------------------- SQS, SSM, Secrets Manager, Lambda


def queue_depth(stack: LocalStack, logical_id: str) -> int:
    attributes = stack.boto3_client("sqs").get_queue_attributes(
        QueueUrl=stack.queue_url(logical_id),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def test_sqs_refuses_in_its_own_shape_and_queues_nothing(fx: LocalStack) -> None:
    sent = probe(fx, "sqs", "send_message", QueueUrl=fx.queue_url("ProbeQueue"), MessageBody="hi")
    assert sent["ok"], sent  # SQSSendMessagePolicy
    before = queue_depth(fx, "OtherQueue")
    refused = probe(fx, "sqs", "send_message", QueueUrl=fx.queue_url("OtherQueue"), MessageBody="x")
    assert_denied(refused, "AccessDenied")
    assert refused["status"] == 403
    arn = f"arn:aws:sqs:us-east-1:{ACCOUNT}:quota-local-OtherQueue"
    assert refused["message"] == not_allowed("sqs:sendmessage", arn)
    # a batch is authorized as its single form
    batch = probe(
        fx,
        "sqs",
        "send_message_batch",
        QueueUrl=fx.queue_url("OtherQueue"),
        Entries=[{"Id": "1", "MessageBody": "x"}],
    )
    assert_denied(batch, "AccessDenied")
    assert queue_depth(fx, "OtherQueue") == before
    assert {"action": "sqs:SendMessage", "resource": arn} in [
        {"action": d["action"], "resource": d["resource"]} for d in denials(fx, "ProbeFunction")
    ]


def test_ssm_and_secrets_manager_refuse_in_their_own_shapes(fx: LocalStack) -> None:
    got = probe(fx, "ssm", "get_parameter", Name="/quota-local/iam-probe")
    assert got["ok"] and got["response"]["Parameter"]["Value"] == "probe"  # SSMParameterReadPolicy
    refused = probe(fx, "ssm", "get_parameter", Name="/quota-local/iam-other")
    assert_denied(refused)
    parameter_arn = f"arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/quota-local/iam-other"
    assert refused["message"] == not_allowed("ssm:GetParameter", parameter_arn)

    secrets = fx.health()["secrets"]
    value = probe(fx, "secretsmanager", "get_secret_value", SecretId=secrets["ProbeSecret"])
    assert value["ok"] and value["response"]["SecretString"] == "probe-secret"
    by_name = probe(fx, "secretsmanager", "get_secret_value", SecretId="quota-local-OtherSecret")
    assert_denied(by_name)
    # authorized on the secret's full ARN, whatever name the caller used
    assert by_name["message"] == not_allowed(
        "secretsmanager:GetSecretValue", secrets["OtherSecret"]
    )
    assert "other-secret" not in json.dumps(by_name)


def test_invoking_another_function_needs_lambda_invoke_function(fx: LocalStack) -> None:
    target = probe(
        fx, "lambda", "invoke", FunctionName="TargetFunction", Payload=json.dumps({"whoami": True})
    )
    assert target["ok"], target
    assert json.loads(target["response"]["Payload"])["access_key_id"].startswith("ASIA")
    for name in ("ProbeFunction", "NoSuchFunction"):  # authorized before it is looked up
        refused = probe(fx, "lambda", "invoke", FunctionName=name, Payload="{}")
        assert_denied(refused)
        assert refused["status"] == 403
        arn = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{name}"
        assert refused["message"] == not_allowed("lambda:InvokeFunction", arn)


def test_each_function_signs_with_credentials_of_its_own(fx: LocalStack) -> None:
    probe_id = fx.invoke("ProbeFunction", {"whoami": True})
    target_id = fx.invoke("TargetFunction", {"whoami": True})
    assert probe_id["has_session_token"] and target_id["has_session_token"]
    keys = {probe_id["access_key_id"], target_id["access_key_id"], "testing"}
    assert len(keys) == 3
    # under concurrency every worker keeps its own role: the target may not write GrantedTable
    granted = table(fx, "GrantedTable")

    def write(function: str) -> tuple[str, bool, str]:
        key = uuid.uuid4().hex
        result = probe(fx, "dynamodb", "put_item", function, TableName=granted, Item=item(key))
        return function, bool(result["ok"]), key

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(write, ["ProbeFunction", "TargetFunction"] * 6))
    assert [(function, ok) for function, ok, _ in outcomes] == [
        ("ProbeFunction", True),
        ("TargetFunction", False),
    ] * 6
    written = {
        function: stored(fx, "GrantedTable", key) is not None for function, _, key in outcomes
    }
    assert written == {"ProbeFunction": True, "TargetFunction": False}


# ---------------------------------------------------------------- pollers use the function's role


def test_a_poller_whose_role_may_not_delete_redelivers_until_the_dlq(fx: LocalStack) -> None:
    fx.boto3_client("sqs").send_message(QueueUrl=fx.queue_url("DeleteDeniedQueue"), MessageBody="m")
    wait_for(
        lambda: queue_depth(fx, "DeleteDeniedDLQ") >= 1,
        timeout=60,
        message="the undeletable message to reach the DLQ",
    )
    assert fx.stats()["invocations"]["DeleteDeniedWorker"] >= 2  # processed, never deleted
    arn = f"arn:aws:sqs:us-east-1:{ACCOUNT}:quota-local-DeleteDeniedQueue"
    refused = [d for d in denials(fx, "DeleteDeniedWorker") if d["action"] == "sqs:DeleteMessage"]
    assert refused and refused[0]["resource"] == arn and refused[0]["explicit"]
    assert refused[0]["operation"] == "sqs.DeleteMessageBatch"


def test_a_poller_whose_role_may_not_receive_delivers_nothing(fx: LocalStack) -> None:
    def receive_denials() -> int:
        return len(
            [d for d in denials(fx, "ReceiveDeniedWorker") if d["action"] == "sqs:ReceiveMessage"]
        )

    fx.boto3_client("sqs").send_message(
        QueueUrl=fx.queue_url("ReceiveDeniedQueue"), MessageBody="m"
    )
    seen = receive_denials()
    wait_for(lambda: receive_denials() > seen, timeout=30, message="the poller to try again")
    assert fx.stats()["invocations"].get("ReceiveDeniedWorker", 0) == 0
    assert queue_depth(fx, "ReceiveDeniedQueue") == 1


def test_the_iam_report_only_answers_get(fx: LocalStack) -> None:
    response = fx.http.post(f"{fx.base_url}/_local/iam", json={}, timeout=10)
    assert response.status_code == 405
    assert fx.iam()["enforced"] is True


def test_a_refusal_its_owner_did_not_declare_fails_the_stack(fx: LocalStack) -> None:
    """What LocalStack.stop checks for every stack the tests start: a refusal of a function
    its owner did not name in expect_access_denied fails it, from GET /_local/iam while the
    stack runs and from its log once it is gone."""
    refused = probe(fx, "dynamodb", "put_item", TableName=table(fx, "OtherTable"), Item=item("k"))
    assert_denied(refused)
    assert fx.access_denied_problems() == []  # ProbeFunction is declared by this fixture
    undeclared = LocalStack("iam", expect_access_denied={"DeleteDeniedWorker"})
    undeclared.port, undeclared.log_path = fx.port, fx.log_path  # the same stack, another owner
    (problem,) = undeclared.access_denied_problems()
    assert "ProbeFunction" in problem
    assert f"dynamodb:PutItem on {table_arn(fx, 'OtherTable')}" in problem
    assert "DeleteDeniedWorker" not in problem
    undeclared.port = free_port()  # nothing answers there: the log still tells
    (from_log,) = undeclared.access_denied_problems()
    assert "ProbeFunction" in from_log and "dynamodb:PutItem" in from_log


# ---------------------------------------------------------------- the real template


def test_every_function_of_the_template_has_its_own_role(stack: LocalStack) -> None:
    report = stack.iam()
    assert report["enforced"] is True
    functions = stack.health()["functions"]
    assert sorted(report["functions"]) == sorted(functions)
    for name, entry in report["functions"].items():
        role = f"quota-local-{name}Role"
        assert entry["principal"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{name}"


def _without_ledger_get_item(document: dict[str, Any]) -> None:
    """CreditPaymentFunction as it was before issue 13: PutItem and ConditionCheckItem on the
    ledger, but not the GetItem that reversing a referred user's order needs."""
    function = document["Resources"]["CreditPaymentFunction"]["Properties"]
    for statement in function["Policies"][0]["Statement"]:
        if statement["Resource"] == [{"Fn::GetAtt": ["LedgerTable", "Arn"]}]:
            statement["Action"].remove("dynamodb:GetItem")
            return
    raise AssertionError("CreditPaymentFunction has no ledger statement with GetItem")


def referred_pair(stack: LocalStack) -> tuple[str, str]:
    """Tokens of an inviter and of a user who signed up with the inviter's referral code."""
    inviter_token = stack.token(f"inviter-{uuid.uuid4().hex[:10]}")
    invitee_token = stack.token(f"invitee-{uuid.uuid4().hex[:10]}")
    code = stack.request("POST", "/account", token=inviter_token, json={}).json()["aff_code"]
    created = stack.request("POST", "/account", token=invitee_token, json={"referral_code": code})
    assert created.status_code == 201, created.text
    return inviter_token, invitee_token


def test_a_permission_the_code_needs_taken_away_parks_the_refund_in_the_dlq() -> None:
    template = template_copy("iam-no-ledger-get", _without_ledger_get_item)
    with LocalStack("iam-no-ledger-get", expect_access_denied={"CreditPaymentFunction"}) as stack:
        stack.start(template, env={"LOCAL_SCHEDULES": "0"})
        inviter_token, invitee_token = referred_pair(stack)
        order = checkout(stack, invitee_token, amount=10)
        assert stack.pay(order["order_id"]).status_code == 200
        wait_status(stack, invitee_token, order["order_id"], "paid")
        rebate = stack.request("GET", "/account", token=inviter_token).json()["aff_quota"]
        assert rebate > 0

        sandbox_event(stack, order, "charge.refunded")
        wait_for(
            lambda: queue_depth(stack, "CreditDLQ") >= 1,
            timeout=90,
            message="the refused refund to reach the credit DLQ",
        )
        # in AWS as here: the refund is not applied, the user keeps the quota, the inviter
        # the rebate, and the event waits in the DLQ (its alarm fires)
        assert wait_status(stack, invitee_token, order["order_id"], "paid")
        invitee = stack.request("GET", "/account", token=invitee_token).json()
        assert invitee["quota"] == 10 * UNIT
        assert stack.request("GET", "/account", token=inviter_token).json()["aff_quota"] == rebate
        ledger = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/{stack.table_name('LedgerTable')}"
        refused = [
            d
            for d in stack.iam()["denials"]
            if d["function"] == "CreditPaymentFunction" and d["resource"] == ledger
        ]
        assert refused and {d["action"] for d in refused} == {"dynamodb:GetItem"}
        assert f"CreditPaymentFunction may not dynamodb:GetItem on {ledger}" in stack.log_text()
