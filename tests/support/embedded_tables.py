"""The template's tables on the embedded AWS, for tests of domain modules without handlers.

Starts local.aws.EmbeddedAws (moto behind one lock, so concurrent requests are safe),
provisions every resource of infra/template.yaml, and points the PynamoDB models at the
tables by their template names, exactly as the functions' environment would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from local.aws import EmbeddedAws
from local.provision import Provisioner, local_environment, waffo_keys
from local.template import Template

ROOT = Path(__file__).resolve().parents[2]

# model class name -> logical id of its table in the template
MODEL_TABLES = {
    "Account": "AccountsTable",
    "ReferralCode": "ReferralCodesTable",
    "Order": "OrdersTable",
    "RedemptionCode": "RedemptionCodesTable",
    "LedgerEntry": "LedgerTable",
    "UsageRecord": "UsageTable",
    "RateLimit": "RateLimitsTable",
    "AuditRecord": "AuditTable",
    "UsageRollup": "UsageRollupsTable",
    "RollupMarker": "UsageRollupsTable",
    "GrantRecord": "GrantsTable",
    "LimitCounter": "LimitWindowsTable",
}
_AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


def wait_for_indexes(aws: EmbeddedAws) -> None:
    """Wait until the indexes have caught up with every write so far: the embedded DynamoDB
    shows a write to an index (and to eventually consistent reads) only after its lag, as AWS."""
    lag_ms = aws.strictness.index_lag_ms if aws.strictness else 0.0
    time.sleep(lag_ms / 1000 + 0.05)


@contextmanager
def embedded_tables() -> Iterator[EmbeddedAws]:
    # moto's backends are per process: start empty, or a second use (another test module)
    # finds the first one's tables and secrets and provisioning fails.
    from moto.moto_api._internal.models import moto_api_backend

    moto_api_backend.reset()
    aws = EmbeddedAws()
    endpoint = aws.start()
    template = Template(ROOT / "infra" / "template.yaml")
    template.aws_endpoint = endpoint
    environment = local_environment(os.environ, waffo_keys(os.environ))
    provisioned = Provisioner(template, aws, environment).run()
    saved = {key: os.environ.get(key) for key in _AWS_VARIABLES}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS
    from billing import db, models

    # Powertools keeps one client per parameter store, bound to the endpoint of its first use.
    DEFAULT_PROVIDERS.clear()

    for model_name, logical_id in MODEL_TABLES.items():
        model = getattr(models, model_name)
        model.Meta.table_name = provisioned.tables[logical_id]
        model.Meta.host = endpoint
        model._connection = None  # drop a connection made for another table or endpoint
    db._shared = None
    try:
        yield aws
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        db._shared = None
        DEFAULT_PROVIDERS.clear()
        aws.stop()
