"""What every test stack checks when it stops (tests/support/stack.py): an answer whose body
its response model does not describe fails the stack's owner, though the function sent it
(billing.http.checked logs and counts it instead of failing a committed write)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.stack import LocalStack, free_port


def test_an_answer_unlike_its_model_in_the_log_fails_the_stack(tmp_path: Path) -> None:
    stack = LocalStack("checks")
    stack.port = free_port()  # nothing answers there: the log alone tells
    stack.log_path = tmp_path / "stack.log"
    clean = {"level": "INFO", "message": "charged", "service": "account"}
    stack.log_path.write_text(f"[AccountFunction] {json.dumps(clean)}\n")
    assert stack.response_model_problems() == []
    wrong = {
        "level": "ERROR",
        "message": "response body does not match its model",
        "response_model": "Account",
        "fields": ["quota"],
    }
    with stack.log_path.open("a") as log:
        log.write(f"[AccountFunction] {json.dumps(wrong)}\n")
    (problem,) = stack.response_model_problems()
    assert "did not match their response model" in problem
    assert '"response_model": "Account"' in problem
