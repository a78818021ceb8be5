"""AccessDenied as each service returns it, so that SDKs raise what they raise in AWS.

DynamoDB (and DynamoDB Streams), SSM, Secrets Manager and EventBridge answer 400 with an
``AccessDeniedException`` JSON body; SQS answers 403 with the code ``AccessDenied`` (in the
JSON protocol through its query-compatible header, with the action in lower case as SQS
writes it); SNS answers 403 ``AuthorizationError`` (its actions spelled ``SNS:Publish``);
Lambda's Invoke answers 403 ``AccessDeniedException``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from xml.sax.saxutils import escape

Response = tuple[int, list[tuple[str, str]], bytes]


@dataclass(frozen=True)
class Refusal:
    """Why IAM refused one action on one resource for one principal."""

    principal_arn: str
    action: str
    resource: str
    explicit: bool  # an explicit Deny, rather than nothing allowing it
    by_boundary: bool = False  # the permissions boundary, not the identity policies

    def message(self, action: str | None = None) -> str:
        shown = action or self.action
        head = f"User: {self.principal_arn} is not authorized to perform: {shown} on resource: "
        kind = "a permissions boundary" if self.by_boundary else "an identity-based policy"
        if self.explicit:
            return f"{head}{self.resource} with an explicit deny in {kind}"
        none = "no permissions boundary" if self.by_boundary else "no identity-based policy"
        return f"{head}{self.resource} because {none} allows the {shown} action"


_JSON_TYPES = {
    "dynamodb": ("com.amazon.coral.service#AccessDeniedException", "application/x-amz-json-1.0"),
    "dynamodbstreams": (
        "com.amazon.coral.service#AccessDeniedException",
        "application/x-amz-json-1.0",
    ),
    "ssm": ("AccessDeniedException", "application/x-amz-json-1.1"),
    "secretsmanager": ("AccessDeniedException", "application/x-amz-json-1.1"),
    "events": ("AccessDeniedException", "application/x-amz-json-1.1"),
}


def access_denied(service: str, json_protocol: bool, refusal: Refusal, endpoint: str) -> Response:
    """The service's own AccessDenied response for a refused request."""
    request_id = str(uuid.uuid4())
    if service == "sqs":
        return _sqs(json_protocol, refusal, endpoint, request_id)
    if service == "sns" and not json_protocol:
        return _sns(refusal, request_id)
    if json_protocol:
        error_type, content_type = _JSON_TYPES.get(
            service, ("AccessDeniedException", "application/x-amz-json-1.1")
        )
        body = {"__type": error_type, "Message": refusal.message()}
        headers = [("Content-Type", content_type), ("x-amzn-RequestId", request_id)]
        return 400, headers, json.dumps(body).encode()
    xml = (
        "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
        f"<Message>{escape(refusal.message())}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return 403, [("Content-Type", "text/xml")], xml.encode()


def _sqs(json_protocol: bool, refusal: Refusal, endpoint: str, request_id: str) -> Response:
    if json_protocol:
        body = {
            "__type": "com.amazon.coral.service#AccessDeniedException",
            "message": refusal.message(refusal.action.lower()),
        }
        headers = [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("x-amzn-RequestId", request_id),
            ("x-amzn-query-error", "AccessDenied;Sender"),
        ]
        return 403, headers, json.dumps(body).encode()
    # The query protocol's older wording.
    xml = (
        "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
        f"<Message>Access to the resource {escape(endpoint.rstrip('/'))}/ is denied.</Message>"
        f"<Detail/></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return 403, [("Content-Type", "text/xml")], xml.encode()


def _sns(refusal: Refusal, request_id: str) -> Response:
    action = "SNS:" + refusal.action.split(":", 1)[-1]
    xml = (
        '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><Error><Type>Sender'
        f"</Type><Code>AuthorizationError</Code><Message>{escape(refusal.message(action))}"
        f"</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return 403, [("Content-Type", "text/xml")], xml.encode()


def lambda_access_denied(refusal: Refusal) -> Response:
    body = {"Type": "User", "Message": refusal.message()}
    headers = [
        ("Content-Type", "application/json"),
        ("x-amzn-ErrorType", "AccessDeniedException"),
        ("x-amzn-RequestId", str(uuid.uuid4())),
    ]
    return 403, headers, json.dumps(body).encode()
