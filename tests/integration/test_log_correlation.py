"""Log lines an operator can follow: each API request's lines carry its API Gateway request id
(the `apigw-requestid` the caller sees) and the caller as a hash, never the user id itself."""

from __future__ import annotations

import hashlib
import json

from tests.support.stack import LocalStack, wait_for


def lines_with(stack: LocalStack, text: str) -> list[dict[str, object]]:
    found = []
    for line in stack.log_text().splitlines():
        start = line.find("{")
        if start < 0 or text not in line:
            continue
        try:
            found.append(json.loads(line[start:]))
        except ValueError:
            continue
    return found


def test_an_api_requests_log_lines_carry_its_request_id_and_a_hashed_user(
    stack: LocalStack, user_id: str
) -> None:
    token = stack.token(user_id)
    response = stack.request("POST", "/account", token=token, json={})
    assert response.status_code in (200, 201), response.text
    request_id = response.headers["apigw-requestid"]
    ref = "u:" + hashlib.sha256(user_id.encode()).hexdigest()[:16]
    lines = wait_for(lambda: lines_with(stack, request_id), message="the request's log lines")
    assert all(line.get("correlation_id") == request_id for line in lines), lines
    assert any(line.get("user") == ref for line in lines), lines
    assert user_id not in json.dumps(lines)
