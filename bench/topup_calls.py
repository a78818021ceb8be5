"""AWS calls per top-up step: DynamoDB and SQS (and SSM / Secrets Manager) calls per checkout,
per webhook and per credit, counted by the local stack's embedded AWS (GET /_local/stats,
reset between steps).

Starts its own local stack (tests/support/stack.py). The bench's own reads are made with the
stack's internal user agent, so only the functions' calls are counted. Attribution: the
webhook function may only call SQS/SSM/Secrets Manager and the credit function only DynamoDB
(template IAM), so after a webhook has been credited its calls split cleanly by service; the
credit is also measured alone through the Invoke API. The first round includes cold caches
(settings, secrets, clients); "warm" is the median of the later rounds.

    .venv/bin/python bench/topup_calls.py        (BENCH_ROUNDS=6 by default)
Writes bench/results/topup_calls.json.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "common")]


from local.aws import INTERNAL_USER_AGENT  # noqa: E402
from tests.support.stack import LocalStack, wait_for  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))
WEBHOOK_SECRET = "whsec_local"  # the stack's dev default
SERVICES = ("dynamodb", "sqs", "ssm", "secretsmanager")


def internal(stack: LocalStack, service: str) -> Any:
    return stack.boto3_client(service, user_agent_extra=INTERNAL_USER_AGENT)


def calls(stack: LocalStack) -> Counter[str]:
    return Counter({k: v for k, v in stack.stats()["calls"].items() if v})


def drained(stack: LocalStack) -> bool:
    attributes = internal(stack, "sqs").get_queue_attributes(
        QueueUrl=stack.queue_url("CreditQueue"),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return all(int(value) == 0 for value in attributes.values())


def order_status(stack: LocalStack, order_id: str) -> str:
    item = internal(stack, "dynamodb").get_item(
        TableName=stack.table_name("OrdersTable"),
        Key={"order_id": {"S": order_id}},
        ConsistentRead=True,
    )["Item"]
    return str(item["status"]["S"])


def is_paid(stack: LocalStack, order_id: str) -> bool:
    return order_status(stack, order_id) == "paid"


def signed_completion(order: dict[str, Any]) -> tuple[bytes, str]:
    event = {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": f"cs_test_{uuid.uuid4().hex}",
                "object": "checkout.session",
                "payment_status": "paid",
                "status": "complete",
                "amount_total": int(Decimal(order["pay_money"]) * 100),
                "currency": "usd",
                "client_reference_id": order["order_id"],
                "metadata": {"order_id": order["order_id"]},
                "payment_intent": f"pi_{uuid.uuid4().hex[:20]}",
            }
        },
    }
    body = json.dumps(event).encode()
    stamp = int(time.time())
    digest = hmac.new(WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    return body, f"t={stamp},v1={digest.hexdigest()}"


def by_service(counter: Counter[str], services: tuple[str, ...]) -> dict[str, int]:
    return {k: v for k, v in sorted(counter.items()) if k.split(".")[0] in services}


def summarise(samples: list[dict[str, int]]) -> dict[str, Any]:
    keys = sorted({key for sample in samples for key in sample})
    warm = samples[1:] or samples
    return {
        "cold": samples[0],
        "warm": {k: statistics.median(s.get(k, 0) for s in warm) for k in keys},
        "warm_total": statistics.median(sum(s.values()) for s in warm),
        "rounds": len(samples),
    }


def run(stack: LocalStack) -> dict[str, Any]:
    user = f"bench-{uuid.uuid4().hex[:8]}"
    token = stack.token(user)
    stack.request("POST", "/account", token=token, json={}).raise_for_status()
    checkout_samples: list[dict[str, int]] = []
    webhook_samples: list[dict[str, int]] = []
    queued_credit_samples: list[dict[str, int]] = []
    invoked_credit_samples: list[dict[str, int]] = []
    duplicate_credit_samples: list[dict[str, int]] = []
    sample_sqs = json.loads((ROOT / "events" / "credit_payment_sqs.json").read_text())

    for _ in range(ROUNDS):
        # --- checkout: POST /checkout (order + Stripe sandbox session)
        stack.reset_stats()
        response = stack.request(
            "POST", "/checkout", token=token, json={"amount": 10, "method": "stripe"}
        )
        response.raise_for_status()
        order = response.json()
        checkout_samples.append(by_service(calls(stack), SERVICES))

        # --- webhook → queue → credit, split by service after the queue drained
        stack.reset_stats()
        body, signature = signed_completion(order)
        reply = stack.request(
            "POST",
            "/webhooks/stripe",
            data=body,
            headers={"Content-Type": "application/json", "Stripe-Signature": signature},
        )
        reply.raise_for_status()
        order_id = str(order["order_id"])
        wait_for(functools.partial(is_paid, stack, order_id), timeout=60)
        wait_for(lambda: drained(stack), timeout=60)
        counted = calls(stack)
        webhook_samples.append(by_service(counted, ("sqs", "ssm", "secretsmanager")))
        queued_credit_samples.append(by_service(counted, ("dynamodb",)))

        # --- one credit alone, through the Invoke API (a new order, then its duplicate)
        second = stack.request(
            "POST", "/checkout", token=token, json={"amount": 10, "method": "stripe"}
        )
        second.raise_for_status()
        record = sample_sqs["Records"][0]
        message = json.loads(record["body"])
        message.update(order_id=second.json()["order_id"], event_id=f"evt_{uuid.uuid4().hex}")
        record["body"] = json.dumps(message)
        stack.reset_stats()
        assert stack.invoke("CreditPaymentFunction", sample_sqs) == {"batchItemFailures": []}
        invoked_credit_samples.append(by_service(calls(stack), SERVICES))
        stack.reset_stats()
        stack.invoke("CreditPaymentFunction", sample_sqs)
        duplicate_credit_samples.append(by_service(calls(stack), SERVICES))

    return {
        "rounds": ROUNDS,
        "per_checkout": summarise(checkout_samples),
        "per_webhook": summarise(webhook_samples),
        "per_credit_from_queue": summarise(queued_credit_samples),
        "per_credit_invoked": summarise(invoked_credit_samples),
        "per_duplicate_credit": summarise(duplicate_credit_samples),
    }


def main() -> dict[str, Any]:
    with LocalStack("bench-topup") as stack:
        stack.start()
        result = run(stack)
    print(f"AWS calls per top-up step (cold = first round, warm = median of {ROUNDS - 1})")
    for step, summary in result.items():
        if not isinstance(summary, dict):
            continue
        print(f"\n{step}: warm total {summary['warm_total']}")
        for key, value in summary["warm"].items():
            print(f"  {key:<34} warm {value:>4}   cold {summary['cold'].get(key, 0):>4}")
    out = ROOT / "bench" / "results" / "topup_calls.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
