"""Admin CLI over the HTTP API: `python -m tools.admin codes create|list|disable`, `ledger export`.

    python -m tools.admin codes create --name "Spring promo" --quota 5000000 --count 2500 \
        --out codes.csv --api-url https://api.example.com --token "$JWT"
    python -m tools.admin codes create --name demo --quota 1000 --count 10 --out demo.csv --local

    python -m tools.admin ledger export --user USER_ID --from 2026-11-01 --to 2026-11-30 \
        --out statement.csv --local

The token comes from --token or ADMIN_TOKEN; with --local (the local stack) an admin dev token
is fetched from /_local/token. Plaintext codes are written once, to the CSV only (never printed):
the file must not exist yet and is created with mode 0600 before any code is made, and rows
are written as each chunk of at most 1000 codes comes back, so an interrupted run keeps the
codes it has created.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import requests

CHUNK = 1000
LOCAL_API_URL = "http://127.0.0.1:3000"
LOCAL_ADMIN_SUB = "admin-cli"
TIMEOUT = (10, 300)
CSV_FIELDS = ("code", "batch_id", "name", "quota", "max_uses", "expires_at")


class CliError(Exception):
    """A failure to report in one line (exit status 1)."""


class Progress(Protocol):
    def update(self, n: int) -> Any: ...


class Api:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, f"{self.base_url}{path}", timeout=TIMEOUT, **kwargs)
        if response.status_code >= 400:
            raise CliError(_describe_error(response))
        return response


def _describe_error(response: requests.Response) -> str:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if isinstance(error, dict) and error.get("code"):
        return f"HTTP {response.status_code} {error['code']}: {error.get('message', '')}"
    return f"HTTP {response.status_code}: {response.text[:200]}"


def _connect(args: argparse.Namespace) -> Api:
    base_url = args.api_url or os.environ.get("API_URL") or (LOCAL_API_URL if args.local else "")
    if not base_url:
        raise CliError("--api-url (or API_URL) is required")
    token = args.token or os.environ.get("ADMIN_TOKEN", "")
    if args.local and not token:
        response = requests.post(
            f"{base_url.rstrip('/')}/_local/token",
            json={"sub": LOCAL_ADMIN_SUB, "admin": True},
            timeout=TIMEOUT,
        )
        if response.status_code != 200:
            raise CliError(f"could not get a local admin token: {_describe_error(response)}")
        token = str(response.json()["token"])
    if not token:
        raise CliError("--token (or ADMIN_TOKEN) is required, or --local for the local stack")
    return Api(base_url, token)


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Progress]:
    try:
        from tqdm import tqdm  # an operator dependency, not shipped in the layer
    except ImportError:
        tqdm = None
    if tqdm is None or not enabled:

        class Silent:
            def update(self, n: int) -> None:
                return None

        yield Silent()
        return
    with tqdm(total=total, unit="code", desc="creating codes", file=sys.stderr) as bar:
        yield bar


def _open_new_csv(path: Path) -> Any:
    """The file for the plaintext codes: created here (never overwritten), owner-only."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise CliError(f"{path} exists; refusing to overwrite codes") from exc
    return os.fdopen(descriptor, "w", newline="", encoding="utf-8")


def _grant(args: argparse.Namespace) -> dict[str, Any]:
    """A promo code's grant object (API.md "Credit grants"): the server validates it."""
    grant: dict[str, Any] = {}
    if args.grant_priority is not None:
        grant["priority"] = args.grant_priority
    if args.grant_expires_in_days is not None:
        grant["expires_in_days"] = args.grant_expires_in_days
    if args.grant_expires_at:
        grant["expires_at"] = args.grant_expires_at
    return grant


def create_codes(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise CliError("--count must be at least 1")
    api = _connect(args)
    out = Path(args.out)
    written = 0
    batches: list[str] = []
    with _open_new_csv(out) as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        handle.flush()
        try:
            with _progress(args.count, not args.no_progress) as bar:
                while written < args.count:
                    size = min(CHUNK, args.count - written)
                    body: dict[str, Any] = {
                        "name": args.name,
                        "quota": args.quota,
                        "count": size,
                        "max_uses": args.max_uses,
                    }
                    if args.expires_at:
                        body["expires_at"] = args.expires_at
                    grant = _grant(args)
                    if grant:
                        body["grant"] = grant
                    created = api.call("POST", "/admin/redemption-codes", json=body)
                    batch_id = str(created["batch_id"])
                    for code in created["codes"]:
                        writer.writerow(
                            {
                                "code": code,
                                "batch_id": batch_id,
                                "name": args.name,
                                "quota": args.quota,
                                "max_uses": args.max_uses,
                                "expires_at": args.expires_at or "",
                            }
                        )
                    handle.flush()
                    os.fsync(handle.fileno())
                    batches.append(batch_id)
                    written += len(created["codes"])
                    bar.update(len(created["codes"]))
        except (CliError, requests.RequestException) as exc:
            if written:
                raise CliError(f"{exc} (the {written} codes created so far are in {out})") from exc
            out.unlink(missing_ok=True)
            raise
    print(f"{written} codes in {len(batches)} batch(es) written to {out}: {', '.join(batches)}")
    return 0


def list_codes(args: argparse.Namespace) -> int:
    api = _connect(args)
    cursor: str | None = args.cursor
    while True:
        params: dict[str, Any] = {"limit": args.limit}
        if cursor:
            params["cursor"] = cursor
        page = api.call("GET", "/admin/redemption-codes", params=params)
        for item in page["items"]:
            print(json.dumps(item, sort_keys=True))
        cursor = page.get("next_cursor")
        if not cursor or not args.all:
            break
    if cursor:
        print(f"more: --cursor {cursor} (or --all)", file=sys.stderr)
    return 0


def disable_code(args: argparse.Namespace) -> int:
    api = _connect(args)
    result = api.call("DELETE", f"/admin/redemption-codes/{quote(args.code_id, safe='')}")
    print(json.dumps(result, sort_keys=True))
    return 0


def export_ledger(args: argparse.Namespace) -> int:
    """Any user's statement, from the same writer as the user's own (billing.ops.statement)."""
    api = _connect(args)
    params = {name: value for name, value in (("from", args.start), ("to", args.end)) if value}
    path = f"/admin/accounts/{quote(args.user, safe='')}/ledger/export"
    text = api.request("GET", path, params=params).text
    out = Path(args.out)
    with _open_new_csv(out) as handle:
        handle.write(text)
    rows = max(text.count("\n") - 1, 0)
    print(f"{rows} ledger entries of {args.user} written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--api-url", help="base URL of the API (or API_URL)")
    connection.add_argument("--token", help="an admin JWT (or ADMIN_TOKEN)")
    connection.add_argument(
        "--local", action="store_true", help="the local stack: its URL and a dev admin token"
    )
    parser = argparse.ArgumentParser(
        prog="python -m tools.admin", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="group", required=True)
    codes = commands.add_parser("codes", help="redemption codes")
    actions = codes.add_subparsers(dest="action", required=True)

    create = actions.add_parser("create", parents=[connection], help="create codes into a CSV")
    create.add_argument("--name", required=True)
    create.add_argument("--quota", type=int, required=True)
    create.add_argument("--count", type=int, required=True)
    create.add_argument("--max-uses", type=int, default=1)
    create.add_argument("--expires-at", help="ISO-8601 time, e.g. 2030-01-31T23:59:59Z")
    create.add_argument(
        "--grant-priority", type=int, help="promo code: priority of its grant (0..100, lower first)"
    )
    promo_expiry = create.add_mutually_exclusive_group()
    promo_expiry.add_argument(
        "--grant-expires-in-days",
        type=int,
        help="promo code: its quota expires N days after redeeming",
    )
    promo_expiry.add_argument(
        "--grant-expires-at", help="promo code: its quota expires at this ISO-8601 time"
    )
    create.add_argument("--out", required=True, help="new CSV file for the plaintext codes")
    create.add_argument("--no-progress", action="store_true")
    create.set_defaults(run=create_codes)

    listing = actions.add_parser("list", parents=[connection], help="list codes, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--cursor", help="the next_cursor of a previous page")
    listing.add_argument("--all", action="store_true", help="follow every page")
    listing.set_defaults(run=list_codes)

    disable = actions.add_parser("disable", parents=[connection], help="disable one code")
    disable.add_argument("code_id")
    disable.set_defaults(run=disable_code)

    ledger = commands.add_parser("ledger", help="users' ledgers")
    ledger_actions = ledger.add_subparsers(dest="action", required=True)
    export = ledger_actions.add_parser(
        "export", parents=[connection], help="a user's statement (CSV) for a date range"
    )
    export.add_argument("--user", required=True, help="the user id")
    export.add_argument("--from", dest="start", help="first day, ISO-8601 (default: 30 days ago)")
    export.add_argument("--to", dest="end", help="last day, ISO-8601 (default: today)")
    export.add_argument("--out", required=True, help="new CSV file for the statement")
    export.set_defaults(run=export_ledger)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"error: the API could not be reached: {type(exc).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
