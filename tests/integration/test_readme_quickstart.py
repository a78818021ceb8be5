"""The README's "Using it locally" commands work as written: real curl and jq against the stack.

The block is read from README.md (only the host and the user change), run by bash with every
curl failing on a non-2xx answer; then the order it bought must be credited.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

from tests.support.stack import LocalStack, wait_for

ROOT = Path(__file__).resolve().parents[2]
# Every curl of the block fails the script on a non-2xx answer and ends its output with a line.
STRICT_CURL = 'curl() { command curl --silent --show-error --fail-with-body "$@"; echo; }\n'


def quickstart_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using it locally", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "README's 'Using it locally' has no sh block"
    return match.group(1)


def test_readme_quickstart_runs_as_written(stack: LocalStack) -> None:
    user = f"readme-{uuid.uuid4().hex[:10]}"
    block = quickstart_block()
    assert "localhost:3000" in block and '"sub": "alice"' in block
    script = block.replace("localhost:3000", stack.base_url.removeprefix("http://")).replace(
        '"sub": "alice"', f'"sub": "{user}"'
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", STRICT_CURL + script + 'echo "ORDER=$ORDER"\n'],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    created, account = json.loads(lines[0]), json.loads(lines[1])
    assert created["user_id"] == user and account == created
    order_id = lines[-1].removeprefix("ORDER=")
    assert order_id.startswith("ord_"), lines

    token = stack.token(user)

    def credited() -> bool:
        return bool(
            stack.request("GET", f"/topups/{order_id}", token=token).json()["status"] == "paid"
        )

    wait_for(credited, timeout=60, message="the README's order to be credited")
    balance = stack.request("GET", "/account", token=token).json()["quota"]
    assert balance > account["quota"]
