"""Credit grants on the hot path (issue 15): the account item at the grant bound, and the
calls and writes of a charge over many grants, measured on a local stack.

- item size and write units (DynamoDB's documented item-size rules: attribute names + values;
  1 write unit per started KB) of an account without grants, and of one at the bound
  (billing.grants.MAX_GRANTS grants with expiry, the overdraft, realistic amounts), read back
  from the embedded DynamoDB; goal: far under the 400 KB limit;
- write units of one charge as DynamoDB bills its TransactWriteItems (2 x ceil(KB) for every
  item: account, usage record, ledger entry, limit counters; + index writes), on an account
  without grants-era fields and on one at the bound, without and with an account and a key
  spend limit (bench/capacity.py's capture, in-process on the embedded AWS); goal: the bound
  adds at most +1 write unit to a charge;
- DynamoDB calls per single charge on an account holding MAX_GRANTS grants: exact, from the
  in-process capture (calls_per_charge_at_bound_in_process), and on the stack the metering
  function's own reads and written items (GET /_local/iam, warm); goal: 1 read + 1
  TransactWriteItems of 3 items, as without grants;
- events per account write for a batch of 100 charges drawing across the grants (the
  account's version counts its writes); goal: unchanged (>= 50).

    .venv/bin/python bench/grants.py
Writes bench/results/grants.json.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]

from billing.grants import MAX_GRANTS  # noqa: E402

from local.aws import INTERNAL_USER_AGENT  # noqa: E402
from tests.support.stack import LocalStack  # noqa: E402

FUNCTION = "MeterUsageFunction"
RESULTS = ROOT / "bench" / "results" / "grants.json"
ROUNDS = 6
ITEM_LIMIT = 400 * 1024


def _number_size(raw: str) -> int:
    digits = Decimal(raw).as_tuple().digits
    return 1 + math.ceil(len(digits) / 2)


def attribute_size(value: dict[str, Any]) -> int:
    """Size in bytes of one attribute value, by DynamoDB's item-size rules."""
    ((kind, raw),) = value.items()
    if kind == "S":
        return len(raw.encode())
    if kind == "N":
        return _number_size(raw)
    if kind == "BOOL" or kind == "NULL":
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + attribute_size(v) + 1 for k, v in raw.items())
    if kind == "L":
        return 3 + sum(attribute_size(v) + 1 for v in raw)
    raise ValueError(kind)


def item_size(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def internal(stack: LocalStack, service: str) -> Any:
    return stack.boto3_client(service, user_agent_extra=INTERNAL_USER_AGENT)


def account_item(stack: LocalStack, user: str) -> dict[str, Any]:
    item: dict[str, Any] = internal(stack, "dynamodb").get_item(
        TableName=stack.table_name("AccountsTable"),
        Key={"user_id": {"S": user}},
        ConsistentRead=True,
    )["Item"]
    return item


def adjust(stack: LocalStack, user: str, delta: int, grant: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"delta": delta, "reason": "bench"}
    if grant is not None:
        body["grant"] = grant
    stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=stack.token("bench-admin", admin=True),
        json=body,
    ).raise_for_status()


def new_user(stack: LocalStack) -> str:
    user = f"bench-grants-{uuid.uuid4().hex[:12]}"
    stack.request("POST", "/account", token=stack.token(user), json={}).raise_for_status()
    return user


def at_the_bound(stack: LocalStack) -> str:
    """An account with MAX_GRANTS promo grants of distinct expiries and priorities, and an
    overdraft (a settle above the balance) repaid only in part: the largest item."""
    user = new_user(stack)
    settle = stack.invoke(
        FUNCTION,
        {**charge(user, 10**6), "action": "settle"},
    )
    assert settle["status"] in ("settled", "rejected"), settle
    for index in range(MAX_GRANTS):
        adjust(
            stack,
            user,
            987_654_321 + index,
            {"priority": index % 100, "expires_in_days": 30 + index},
        )
    return user


def charge(user: str, prompt_tokens: int = 80) -> dict[str, Any]:
    return {
        "action": "charge",
        "request_id": f"bench-{uuid.uuid4().hex}",
        "user_id": user,
        "model": "gpt-4o",
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 0,
    }


def _meter_actions(stack: LocalStack) -> Counter[str]:
    # The metering function's own calls (GET /_local/iam, per function): the stack-wide
    # counts also hold the stream consumers' reads (billing events, rollups) after a charge.
    # An item of a transaction counts as its action (Put/UpdateItem).
    allowed = stack.iam()["functions"][FUNCTION]["allowed"]
    return Counter({k: int(v) for k, v in allowed.items()})


def calls_per_charge(stack: LocalStack, user: str) -> dict[str, Any]:
    rounds: list[Counter[str]] = []
    for _ in range(ROUNDS):
        before = _meter_actions(stack)
        result = stack.invoke(FUNCTION, charge(user))
        assert result["status"] == "charged", result
        own = _meter_actions(stack) - before
        rounds.append(
            Counter(
                {
                    "dynamodb.GetItem (metering's own)": own["dynamodb:GetItem"],
                    "items written by metering": sum(
                        v for k, v in own.items() if k.endswith(("PutItem", "UpdateItem"))
                    ),
                }
            )
        )
    names = sorted({name for counted in rounds for name in counted})
    warm = {name: statistics.median(c[name] for c in rounds[1:]) for name in names}
    return {"warm": warm, "rounds": ROUNDS}


def events_per_write(stack: LocalStack, user: str, size: int = 100) -> dict[str, Any]:
    before = int(account_item(stack, user)["version"]["N"])
    # 62.5M quota each (the bound's grants hold ~7.9B): every 16th charge or so crosses from
    # one grant into the next
    events = [charge(user, 50_000_000) for _ in range(size)]
    results = stack.invoke(FUNCTION, {"events": events})["results"]
    charged = sum(1 for r in results if r["status"] == "charged")
    writes = int(account_item(stack, user)["version"]["N"]) - before
    return {
        "batch_size": size,
        "charged": charged,
        "account_writes": writes,
        "events_per_account_write": round(size / max(writes, 1), 2),
    }


def main() -> dict[str, Any]:
    with LocalStack("bench-grants") as stack:
        stack.start(env={"LOCAL_SCHEDULES": "0"})
        plain = new_user(stack)
        adjust(stack, plain, 10**9, None)
        bound = at_the_bound(stack)
        plain_item = account_item(stack, plain)
        plain_size = item_size(plain_item)
        today = item_size({k: v for k, v in plain_item.items() if k != "grants"})
        bound_item = account_item(stack, bound)
        bound_size = item_size(bound_item)
        grants = len(bound_item["grants"]["M"])
        sizes = {
            "max_grants": MAX_GRANTS,
            "grants_on_item": grants,
            "without_grants_bytes": today,
            "without_grants_write_units": write_units(today),
            "one_grant_bytes": plain_size,
            "one_grant_write_units": write_units(plain_size),
            "at_bound_bytes": bound_size,
            "at_bound_write_units": write_units(bound_size),
            "extra_standard_write_units": write_units(bound_size) - write_units(today),
            "share_of_400kb": round(bound_size / ITEM_LIMIT, 4),
        }
        result = {
            "item": sizes,
            "calls_per_charge_at_bound": calls_per_charge(stack, bound),
            "batch_at_bound": events_per_write(stack, bound),
        }
    # In-process, after the stack is gone: capacity's capture patches botocore.
    sys.path.insert(0, str(ROOT / "bench"))
    from capacity import grant_bound_only

    bound_charges = grant_bound_only()
    result["charge_write_units"] = {
        name: {"write_units": row["write_units"], "account_item_bytes": row["account_item_bytes"]}
        for name, row in bound_charges["charges"].items()
    }
    # Exact calls of one charge at the bound (the capture sees every call metering makes).
    result["calls_per_charge_at_bound_in_process"] = bound_charges["charges"]["at_bound"]["calls"]
    result["charge_at_bound"] = {
        "value": {
            "extra_write_units": bound_charges["extra_write_units"],
            "extra_write_units_with_limits": bound_charges["extra_write_units_with_limits"],
        },
        "goal": "<= +1 write unit per charge over an account without grants-era fields",
        "met": bound_charges["met"],
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
