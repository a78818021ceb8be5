"""`python -m tools.reconcile`: run the reconciliation (billing.ops.reconciliation) and report.

    python -m tools.reconcile --local http://127.0.0.1:3000     # the local stack
    ACCOUNTS_TABLE=... LEDGER_TABLE=... ORDERS_TABLE=... USAGE_TABLE=... \
        REDEMPTION_CODES_TABLE=... python -m tools.reconcile     # AWS (your credentials)

With --local the table names and the embedded AWS endpoint come from the stack's
/_local/health. Otherwise the names come from the options or the environment, and the
endpoint from AWS_ENDPOINT_URL when set. Read-only, and streamed (memory holds one account
at a time). Exit status: 0 clean, 1 differences, 2 the run itself failed. Accounts that kept
changing through every re-check are printed as UNVERIFIED (not differences).

The settings document says how many index shards hold a user's usage (usage.user_shards):
SETTINGS_PARAMETER (the SSM parameter) or SETTINGS_FILE; with --local, settings/local.json
(what the local stack is seeded from) unless SETTINGS_FILE is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from billing.ops.reconciliation import DEFAULT_OPTIONS, Options, Tables, reconcile

from tools import target

_LOCAL_TABLES = {
    "accounts": "AccountsTable",
    "ledger": "LedgerTable",
    "orders": "OrdersTable",
    "usage": "UsageTable",
    "codes": "RedemptionCodesTable",
}
_OPTIONS = {
    "accounts": "ACCOUNTS_TABLE",
    "ledger": "LEDGER_TABLE",
    "orders": "ORDERS_TABLE",
    "usage": "USAGE_TABLE",
    "codes": "REDEMPTION_CODES_TABLE",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.reconcile",
        description="Recompute every balance from the ledger and every order from its ledger "
        "entries; print the differences (never fixes anything). Exit 1 on differences.",
    )
    parser.add_argument("--local", metavar="URL", help="the local stack's base URL")
    parser.add_argument("--endpoint-url", help="DynamoDB endpoint (default: AWS_ENDPOINT_URL)")
    parser.add_argument("--region", default=None, help="AWS region (default: AWS_REGION)")
    for name, variable in _OPTIONS.items():
        parser.add_argument(f"--{name}-table", help=f"table name (default: ${variable})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--rechecks",
        type=int,
        default=2,
        help="fresh re-reads of each suspect before it is reported",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=DEFAULT_OPTIONS.pause,
        help="seconds before each round of re-reads (longer than the index lag)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        where = target.choose(args.local, args.endpoint_url, args.region)
        if where.local:
            names = {name: where.tables[logical] for name, logical in _LOCAL_TABLES.items()}
            tables = Tables(
                accounts=names["accounts"],
                ledger=names["ledger"],
                orders=names["orders"],
                usage=names["usage"],
                codes=names["codes"],
            )
        else:
            environ = dict(os.environ)
            for name, variable in _OPTIONS.items():
                value = getattr(args, f"{name}_table")
                if value:
                    environ[variable] = value
            tables = Tables.from_environment(environ)
        credentials = where.credentials
        report = reconcile(
            tables,
            Options(rechecks=max(0, args.rechecks), pause=max(0.0, args.pause)),
            endpoint=where.endpoint,
            credentials=(
                (credentials["aws_access_key_id"], credentials["aws_secret_access_key"])
                if credentials
                else None
            ),
            region=where.region,
        )
    except Exception as exc:
        print(f"reconciliation could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        counted = ", ".join(f"{value} {name}" for name, value in report.counts.items())
        print(f"reconciled {counted}")
        for difference in report.differences:
            print(f"DIFFERENCE {difference}")
        for unsettled in report.unverified:
            print(f"UNVERIFIED {unsettled}")
        if not report.complete:
            print(f"incomplete: stopped in the {report.stopped} pass")
        print("no differences" if report.clean else f"{len(report.differences)} differences")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
