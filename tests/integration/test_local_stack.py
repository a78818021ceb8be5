"""The local stack's emulation itself (API Gateway, JWT authorizer, Lambda runtime and Invoke
API, SQS event sources, provisioning, faults), on the fixture template in
tests/fixtures/local_stack/ rather than on the project's functions."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.stack import ROOT, LambdaFunctionError, LocalStack, free_port, wait_for

FIXTURE = ROOT / "tests" / "fixtures" / "local_stack"
TEMPLATE = FIXTURE / "template.yaml"


@pytest.fixture(scope="module")
def fx() -> Iterator[LocalStack]:
    stack = LocalStack("fixture")
    stack.start(
        TEMPLATE,
        env={
            "LEAK_CANARY": "must-not-reach-functions",
            "FIXTURE_API_KEY": "fixture-key",
            "FIXTURE_EMPTY": "",
            "LOCAL_SANDBOX_PLUGINS": "tests.fixtures.local_stack.sandbox_fake",
            "LOCAL_MAX_INSTANCES": "3",
            "LOCAL_SCHEDULES": "0",
            # These tests count deliveries; duplicates are test_local_stack_strict.py's.
            "LOCAL_SQS_DUPLICATE_PROBABILITY": "0",
        },
    )
    try:
        yield stack
    finally:
        stack.stop()


def echo_body(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def invocations(stack: LocalStack, function: str) -> int:
    return int(stack.stats()["invocations"].get(function, 0))


# ---------------------------------------------------------------- provisioning


def test_health_lists_what_the_template_declares(fx: LocalStack) -> None:
    health = fx.health()
    assert health["status"] == "ok"
    assert set(health["tables"]) == {"RecordsTable"}  # CognitoOnlyTable's condition is false
    assert health["tables"]["RecordsTable"] == "quota-local-RecordsTable"
    assert set(health["queues"]) == {
        "WorkQueue",
        "WorkDLQ",
        "BulkyQueue",
        "OrderedQueue",
        "OrderedDLQ",
    }
    assert health["queues"]["OrderedQueue"].endswith("/quota-local-OrderedQueue.fifo")
    assert "MissingFunction" in health["functions"]
    assert "UserPool" in health["skipped_resources"]
    assert health["function_status"]["MissingFunction"]["init_error"]

    dynamodb = fx.boto3_client("dynamodb")
    table = dynamodb.describe_table(TableName="quota-local-RecordsTable")["Table"]
    assert table["GlobalSecondaryIndexes"][0]["IndexName"] == "by_kind"
    ttl = dynamodb.describe_time_to_live(TableName="quota-local-RecordsTable")
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires_at"
    sqs = fx.boto3_client("sqs")
    attributes = sqs.get_queue_attributes(
        QueueUrl=fx.queue_url("OrderedQueue"), AttributeNames=["All"]
    )["Attributes"]
    assert attributes["FifoQueue"] == "true"
    assert json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"].endswith(
        ":quota-local-OrderedDLQ.fifo"
    )


def test_parameters_and_secrets_come_from_local_sources(fx: LocalStack) -> None:
    assert fx.invoke("EchoFunction", {"action": "settings"}) == {
        "settings": '{"from": "value file"}\n'
    }
    secret = json.loads(fx.invoke("EchoFunction", {"action": "secret"})["secret"])
    # env value, dev default (unset), and set-but-empty stays empty
    assert secret == {"api_key": "fixture-key", "stripe": "sk_test_local", "empty": ""}


# ---------------------------------------------------------------- API Gateway and JWT


def test_routed_request_gets_a_v2_event_with_claims(fx: LocalStack) -> None:
    token = fx.token("alice", admin=True)
    response = fx.request(
        "GET",
        "/echo/hello%20world?b=2&a=1&a=3",
        token=token,
        headers={"Cookie": "c1=x; c2=y", "X-Multi": "v"},
    )
    body = echo_body(response)
    assert response.headers["x-echo"] == "1"
    assert response.raw.headers.getlist("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    event = body["event"]
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /echo/{name}"
    assert event["rawPath"] == "/echo/hello%20world"
    assert event["rawQueryString"] == "b=2&a=1&a=3"
    assert event["queryStringParameters"] == {"a": "1,3", "b": "2"}
    assert event["pathParameters"] == {"name": "hello world"}
    assert event["cookies"] == ["c1=x", "c2=y"]
    assert "cookie" not in event["headers"] and event["headers"]["x-multi"] == "v"
    assert event["isBase64Encoded"] is False and "body" not in event
    context = event["requestContext"]
    assert context["http"]["method"] == "GET" and context["stage"] == "$default"
    assert context["routeKey"] == "GET /echo/{name}" and context["accountId"] == "123456789012"
    claims = context["authorizer"]["jwt"]["claims"]
    assert claims["sub"] == "alice"
    assert claims["cognito:groups"] == "[admin]"
    assert claims["aud"] == "local-console" and claims["iss"] == fx.base_url + "/_local"
    assert isinstance(claims["exp"], str)
    assert body["context"]["function_name"] == "EchoFunction"
    assert body["context"]["function_version"] == "$LATEST"
    assert 0 < body["context"]["remaining"] <= 5000
    assert body["layer"] == "LAYER"


@pytest.mark.parametrize(
    "case",
    ["missing", "garbage", "expired", "wrong_issuer", "wrong_audience", "other_key", "alg_none"],
)
def test_bad_tokens_are_401_and_nothing_runs(fx: LocalStack, case: str) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    headers: dict[str, str] = {}
    if case == "garbage":
        headers["Authorization"] = "Bearer not-a-jwt"
    elif case == "expired":
        headers["Authorization"] = "Bearer " + fx.token("bob", expires_in=-60)
    elif case == "wrong_issuer":
        headers["Authorization"] = "Bearer " + fx.token("bob", claims={"iss": "https://evil"})
    elif case == "wrong_audience":
        headers["Authorization"] = "Bearer " + fx.token("bob", claims={"aud": "someone-else"})
    elif case == "other_key":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode(
            {
                "sub": "m",
                "iss": fx.base_url + "/_local",
                "aud": "local-console",
                "exp": int(time.time()) + 600,
            },
            key,
            algorithm="RS256",
        )
        headers["Authorization"] = f"Bearer {forged}"
    elif case == "alg_none":
        headers["Authorization"] = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
    before = invocations(fx, "EchoFunction")
    response = fx.request("GET", "/echo/x", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}
    assert invocations(fx, "EchoFunction") == before


def test_bare_token_and_public_routes(fx: LocalStack) -> None:
    bare = fx.request("GET", "/echo/x", headers={"Authorization": fx.token("carol")})
    assert (
        echo_body(bare)["event"]["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] == "carol"
    )
    public = echo_body(fx.request("GET", "/public/a/b/c"))
    assert public["event"]["pathParameters"] == {"proxy": "a/b/c"}
    assert "authorizer" not in public["event"]["requestContext"]


def test_unknown_route_is_404(fx: LocalStack) -> None:
    for method, path in (("GET", "/nowhere"), ("DELETE", "/echo"), ("GET", "/echo")):
        response = fx.request(method, path, token=fx.token("dave"))
        assert response.status_code == 404, (method, path)
        assert response.json() == {"message": "Not Found"}


def test_bodies_text_json_and_base64_form(fx: LocalStack) -> None:
    form = echo_body(fx.request("POST", "/public/form", data={"a": "1", "b": "x y"}))["event"]
    assert form["isBase64Encoded"] is True
    assert base64.b64decode(form["body"]) == b"a=1&b=x+y"
    as_json = echo_body(fx.request("POST", "/public/json", json={"k": "é"}))["event"]
    assert as_json["isBase64Encoded"] is False and json.loads(as_json["body"]) == {"k": "é"}
    binary = echo_body(
        fx.request(
            "POST",
            "/public/bin",
            data=b"\x00\xff",
            headers={"content-type": "application/octet-stream"},
        )
    )
    assert base64.b64decode(binary["event"]["body"]) == b"\x00\xff"


def test_cors_preflight_and_headers(fx: LocalStack) -> None:
    preflight = fx.request(
        "OPTIONS",
        "/echo",
        headers={
            "Origin": "http://example.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Max-Age"] == "600"
    unauthorized = fx.request("GET", "/echo/x", headers={"Origin": "http://example.test"})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["Access-Control-Allow-Origin"] == "*"


def test_function_errors_through_http_are_500(fx: LocalStack) -> None:
    response = fx.request("POST", "/boom", token=fx.token("erin"), json={})
    assert response.status_code == 500
    assert response.json() == {"message": "Internal Server Error"}


# ---------------------------------------------------------------- Lambda runtime and Invoke API


def test_invoke_api_success_error_and_unknown(fx: LocalStack) -> None:
    assert fx.invoke("EchoFunction", {"action": "return", "value": {"n": 1}}) == {"n": 1}
    arn = "arn:aws:lambda:us-east-1:123456789012:function:EchoFunction"
    assert fx.invoke(arn, {"action": "return", "value": [1, 2]}) == [1, 2]

    with pytest.raises(LambdaFunctionError) as failed:
        fx.invoke("RaisesFunction", {})
    assert failed.value.kind == "Unhandled"
    assert failed.value.payload["errorType"] == "ValueError"
    assert failed.value.payload["errorMessage"] == "boom from the fixture"
    assert failed.value.payload["stackTrace"]

    with pytest.raises(ClientError) as missing:
        fx.invoke("NoSuchFunction", {})
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert "Function not found" in missing.value.response["Error"]["Message"]

    assert fx.invoke_raw("EchoFunction", {}, "Event")["StatusCode"] == 202
    assert fx.invoke_raw("EchoFunction", {}, "DryRun")["StatusCode"] == 204


def test_missing_handler_is_an_import_error_not_a_crash(fx: LocalStack) -> None:
    with pytest.raises(LambdaFunctionError) as failed:
        fx.invoke("MissingFunction", {})
    assert failed.value.error_type == "Runtime.ImportModuleError"
    assert fx.health()["status"] == "ok"


def test_timeout_kills_the_worker_and_the_next_call_works(fx: LocalStack) -> None:
    with pytest.raises(LambdaFunctionError) as timed_out:
        fx.invoke("SlowFunction", {"sleep": 3})
    assert "Task timed out after 1.00 seconds" in timed_out.value.payload["errorMessage"]
    assert fx.invoke("SlowFunction", {"sleep": 0}) == {"slept": 0}


def test_each_function_sees_only_its_template_environment(fx: LocalStack) -> None:
    token = fx.token("frank")
    echo = echo_body(fx.request("GET", "/echo/env", token=token))
    other = echo_body(fx.request("GET", "/other", token=token))
    echo_env, other_env = echo["env"], other["env"]
    assert echo_env["ECHO_ONLY"] == "echo" and "OTHER_ONLY" not in echo_env
    assert other_env["OTHER_ONLY"] == "other" and "ECHO_ONLY" not in other_env
    for env in (echo_env, other_env):
        assert "LEAK_CANARY" not in env and "PYTHONUNBUFFERED" not in env
        assert env["STAGE"] == "dev" and env["RECORDS_TABLE"] == "quota-local-RecordsTable"
        assert env["SETTINGS_PARAMETER"] == "/quota-local/fixture-settings"
        assert env["AWS_REGION"] == "us-east-1" and env["TZ"] == "UTC"
        assert env["AWS_ENDPOINT_URL"] == fx.aws_endpoint
    assert echo_env["AWS_LAMBDA_FUNCTION_NAME"] == "EchoFunction"
    assert other_env["AWS_LAMBDA_FUNCTION_NAME"] == "OtherFunction"
    assert echo_env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert echo_env["JOINED"] == "a-y"
    assert echo_env["SUBSTITUTED"] == "dev-us-east-1-${Literal}"
    assert echo_env["NOT_COGNITO"] == "yes" and echo_env["NUMBER"] == "42"
    assert echo_env["ORDERED_QUEUE_NAME"] == "quota-local-OrderedQueue.fifo"
    assert echo_env["WORK_QUEUE_URL"] == fx.queue_url("WorkQueue")
    assert echo_env["SECRET_ARN"].startswith("arn:aws:secretsmanager:us-east-1:123456789012:")
    assert echo_env["STRIPE_API_BASE"] == fx.base_url + "/_local/sandbox/stripe"
    assert echo["sys_path"][0].endswith("functions/echo")
    assert echo["sys_path"][1].endswith("local_stack/layer")
    assert str(ROOT) not in echo["sys_path"]
    assert set(echo["stack_modules"]) <= {"local", "local.worker"}  # nothing else of the stack
    assert echo["cwd"].endswith("functions/echo")


# ---------------------------------------------------------------- SQS event sources


def _send(fx: LocalStack, queue: str, mode: str, **extra: Any) -> str:
    message_id = f"{mode}-{uuid.uuid4().hex[:8]}"
    fx.boto3_client("sqs").send_message(
        QueueUrl=fx.queue_url(queue),
        MessageBody=json.dumps({"id": message_id, "mode": mode}),
        **extra,
    )
    return message_id


def _record(fx: LocalStack, pk: str) -> dict[str, Any] | None:
    item = (
        fx.boto3_client("dynamodb")
        .get_item(TableName="quota-local-RecordsTable", Key={"pk": {"S": pk}}, ConsistentRead=True)
        .get("Item")
    )
    return item


def _queue_empty(fx: LocalStack, queue: str) -> bool:
    attributes = fx.boto3_client("sqs").get_queue_attributes(
        QueueUrl=fx.queue_url(queue),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return attributes == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }


def _dlq_bodies(fx: LocalStack, queue: str) -> list[str]:
    messages = (
        fx.boto3_client("sqs")
        .receive_message(
            QueueUrl=fx.queue_url(queue),
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            VisibilityTimeout=0,
        )
        .get("Messages", [])
    )
    return [m["Body"] for m in messages]


def test_partial_batch_failure_is_retried_then_deleted(fx: LocalStack) -> None:
    ok = _send(fx, "WorkQueue", "ok")
    flaky = _send(fx, "WorkQueue", "flaky")
    done = wait_for(
        lambda: (_record(fx, flaky) or {}).get("deliveries", {}).get("N") == "2",
        timeout=20,
        message="the flaky message's second delivery",
    )
    assert done
    # A standard queue keeps no order: the good message may be handled after the retry.
    wait_for(lambda: _record(fx, ok), timeout=20, message="the good message's delivery")
    assert _record(fx, ok)["deliveries"]["N"] == "1"  # type: ignore[index]
    wait_for(lambda: _queue_empty(fx, "WorkQueue"), timeout=10, message="an empty queue")
    time.sleep(1.5)  # nothing comes back after the retry delay
    assert _record(fx, flaky)["deliveries"]["N"] == "2"  # type: ignore[index]


def test_always_failing_message_lands_in_the_dlq(fx: LocalStack) -> None:
    poison = _send(fx, "WorkQueue", "poison")
    found = wait_for(
        lambda: [b for b in _dlq_bodies(fx, "WorkDLQ") if poison in b],
        timeout=30,
        message="the poison message in the DLQ",
    )
    assert found
    assert _record(fx, poison)["deliveries"]["N"] == "2"  # type: ignore[index]  # maxReceiveCount


def test_fifo_records_carry_group_and_redrive(fx: LocalStack) -> None:
    ok = _send(fx, "OrderedQueue", "ok", MessageGroupId="g1", MessageDeduplicationId="d-ok")
    poison = _send(
        fx, "OrderedQueue", "poison", MessageGroupId="g2", MessageDeduplicationId="d-poison"
    )
    wait_for(lambda: _record(fx, ok), timeout=15, message="the FIFO message")
    assert _record(fx, ok)["group_id"]["S"] == "g1"  # type: ignore[index]
    assert _record(fx, ok)["src_arn"]["S"].endswith(":quota-local-OrderedQueue.fifo")  # type: ignore[index]
    wait_for(
        lambda: [b for b in _dlq_bodies(fx, "OrderedDLQ") if poison in b],
        timeout=30,
        message="the FIFO poison message in its DLQ",
    )


def test_a_batch_holds_what_fits_lambdas_payload_limit_and_the_rest_follows(
    fx: LocalStack,
) -> None:
    # 80 messages of 200 KB, BatchSize 100, two pollers gathering for 3 s: a batch of what
    # they receive would be ~8 MB; Lambda invokes with what fits 6 MB, the rest comes next.
    padding = "x" * 200_000
    sqs = fx.boto3_client("sqs")

    def send(n: int) -> str:
        message_id = f"bulky-{n}-{uuid.uuid4().hex[:8]}"
        body = json.dumps({"id": message_id, "mode": "ok", "padding": padding})
        sqs.send_message(QueueUrl=fx.queue_url("BulkyQueue"), MessageBody=body)
        return message_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        sent = list(pool.map(send, range(80)))
    wait_for(lambda: all(_record(fx, m) for m in sent), timeout=90, message="every bulky message")
    records = [_record(fx, m) or {} for m in sent]
    assert {r["deliveries"]["N"] for r in records} == {"1"}
    batch_bytes = [int(r["batch_bytes"]["N"]) for r in records]
    assert max(batch_bytes) <= 6 * 1024 * 1024
    # Large batches still (a standard queue holds a few messages back for a later batch).
    assert max(int(r["batch_records"]["N"]) for r in records) >= 20
    wait_for(lambda: _queue_empty(fx, "BulkyQueue"), timeout=20, message="an empty queue")


def test_poller_death_redelivers_the_batch(fx: LocalStack) -> None:
    fx.fault(poller="WorkerFunction", event="Work", die_after_invoke=1)
    message = _send(fx, "WorkQueue", "ok")
    wait_for(
        lambda: (_record(fx, message) or {}).get("deliveries", {}).get("N") == "2",
        timeout=20,
        message="a redelivery after the poller died",
    )
    wait_for(lambda: _queue_empty(fx, "WorkQueue"), timeout=10, message="an empty queue")
    assert fx.fault(clear=True)["pollers"]["WorkerFunction/Work"]["die_after_invoke"] == 0


# ---------------------------------------------------------------- faults, stats, schedules


def test_fault_injection_reaches_boto3_clients(fx: LocalStack) -> None:
    client = fx.boto3_client("dynamodb", retries={"total_max_attempts": 1})
    key = {"pk": {"S": f"fault-{uuid.uuid4().hex[:8]}"}}
    fx.fault(
        service="dynamodb",
        operation="GetItem",
        error_code="ThrottlingException",
        after=1,
        count=1,
        contains=key["pk"]["S"],
    )
    client.get_item(TableName="quota-local-RecordsTable", Key=key)  # skipped by "after"
    with pytest.raises(ClientError) as throttled:
        client.get_item(TableName="quota-local-RecordsTable", Key=key)
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    client.get_item(TableName="quota-local-RecordsTable", Key=key)  # count exhausted

    fx.fault(service="sqs", operation="SendMessage", error_code="InternalServerError")
    with pytest.raises(ClientError) as broken:
        fx.boto3_client("sqs", retries={"total_max_attempts": 1}).send_message(
            QueueUrl=fx.queue_url("WorkDLQ"), MessageBody="x"
        )
    assert broken.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    fx.clear_faults()
    stats = fx.stats()
    assert stats["calls"]["dynamodb.GetItem"] >= 3
    assert stats["injected_faults"]["dynamodb.GetItem"] >= 1


def test_concurrent_conditional_writes_are_linearizable(fx: LocalStack) -> None:
    client = fx.boto3_client("dynamodb", max_pool_connections=32)
    pk = f"race-{uuid.uuid4().hex[:8]}"

    def claim(index: int) -> bool:
        try:
            client.put_item(
                TableName="quota-local-RecordsTable",
                Item={"pk": {"S": pk}, "winner": {"N": str(index)}},
                ConditionExpression="attribute_not_exists(pk)",
            )
            return True
        except client.exceptions.ConditionalCheckFailedException:
            return False

    def bump(_: int) -> None:
        client.update_item(
            TableName="quota-local-RecordsTable",
            Key={"pk": {"S": pk + "-n"}},
            UpdateExpression="ADD n :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )

    with ThreadPoolExecutor(max_workers=24) as pool:
        wins = list(pool.map(claim, range(24)))
        list(pool.map(bump, range(48)))
    assert wins.count(True) == 1
    assert _record(fx, pk + "-n")["n"]["N"] == "48"  # type: ignore[index]


def test_schedule_runs_on_demand(fx: LocalStack) -> None:
    response = fx.run_schedule("EchoFunction", "Nightly")
    assert response.status_code == 200
    event = json.loads(response.json()["body"])["event"]
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert fx.run_schedule("EchoFunction", "Nope").status_code == 404


# ---------------------------------------------------------------- sandbox and console


def test_sandbox_dispatch_and_pay(fx: LocalStack) -> None:
    order_id = f"ord-{uuid.uuid4().hex[:8]}"
    created = fx.request("POST", "/_local/sandbox/fake/sessions", json={"order_id": order_id})
    assert created.status_code == 201
    assert fx.request("GET", created.json()["pay_url"][len(fx.base_url) :]).status_code == 200
    paid = fx.pay(order_id)
    assert paid.status_code == 200, paid.text
    result = paid.json()
    assert result["webhook_status"] == 200
    event = result["webhook_body"]["event"]
    assert event["routeKey"] == "ANY /public/{proxy+}"
    assert event["headers"]["x-fake-signature"]
    assert json.loads(event["body"]) == {"order_id": order_id, "outcome": "paid"}
    missing = fx.pay("no-such-order")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert (
        fx.request("POST", f"/_local/sandbox/pay/{order_id}", json={"outcome": "maybe"}).status_code
        == 400
    )


def test_console_config(fx: LocalStack) -> None:
    config = fx.request("GET", "/console/config.json").json()
    assert config == {"apiBaseUrl": "", "auth": {"mode": "local", "tokenUrl": "/_local/token"}}
    assert fx.request("GET", "/console/../pyproject.toml").status_code == 404
    assert fx.request("POST", "/_local/token", json={"admin": True}).status_code == 400


# ---------------------------------------------------------------- the template reader


def test_template_intrinsics_conditions_and_globals(tmp_path: Path) -> None:
    from local.template import Template, TemplateError

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "template.yaml").write_text("""
Parameters:
  Stage: {Type: String, Default: dev}
  Names: {Type: CommaDelimitedList, Default: "a,b"}
Conditions:
  IsDev: !Equals [!Ref Stage, dev]
  Both: !And [!Condition IsDev, !Not [!Equals [!Ref Stage, prod]]]
  Either: !Or [!Equals [!Ref Stage, prod], !Condition Both]
Mappings:
  Sizes: {dev: {memory: 256}}
Globals:
  Function:
    Timeout: 7
    Environment: {Variables: {SHARED: shared, OVERRIDDEN: global}}
Resources:
  Topic: {Type: AWS::SNS::Topic}
  Alarm: {Type: AWS::CloudWatch::Alarm}
  Maybe: {Type: AWS::SQS::Queue, Condition: Either, Properties: {}}
  Queue: {Type: AWS::SQS::Queue, Properties: {FifoQueue: true}}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: code
      Handler: app.handler
      MemorySize: !FindInMap [Sizes, !Ref Stage, memory]
      Environment:
        Variables:
          OVERRIDDEN: local
          NAME: !GetAtt Queue.QueueName
          SECOND: !Select [1, !Ref Names]
          OPTIONAL: !If [Both, !Ref AWS::NoValue, never]
""")
    template = Template(tmp_path / "template.yaml", {"Stage": "dev"})
    assert template.conditions == {"IsDev": True, "Both": True, "Either": True}
    template.aws_endpoint = "http://127.0.0.1:1"
    function = template.function("Fn")
    assert function.timeout == 7 and function.memory_size == 256
    assert function.environment == {
        "SHARED": "shared",
        "OVERRIDDEN": "local",
        "NAME": "quota-local-Queue.fifo",
        "SECOND": "b",
    }
    assert template.ref("Queue") == "http://127.0.0.1:1/123456789012/quota-local-Queue.fifo"
    assert template.ref("Topic") == "arn:aws:sns:us-east-1:123456789012:quota-local-Topic"
    with pytest.raises(TemplateError, match="AWS::CloudWatch::Alarm is not emulated"):
        template.resolve({"Ref": "Alarm"})
    with pytest.raises(TemplateError, match="unknown parameter or resource"):
        template.resolve({"Fn::Sub": "${Nope}"})
    prod = Template(tmp_path / "template.yaml", {"Stage": "prod"})
    assert prod.conditions["Either"] is True and prod.conditions["Both"] is False
    assert "Maybe" in prod.resources


# ---------------------------------------------------------------- the command line


def test_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "local", "--port", str(port), "--template", str(TEMPLATE)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "already in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "local", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0 and "--template" in result.stdout
    assert free_port() > 0
