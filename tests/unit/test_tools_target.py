"""tools/target.py: where an operator command runs, the local stack's names from its real
/_local/health (served here by a real HTTP server on 127.0.0.1) or AWS's from options and
the environment."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tools import target

HEALTH = {
    "aws_endpoint": "http://127.0.0.1:1234",
    "tables": {"UsageTable": "quota-local-UsageTable", "AccountsTable": "quota-local-Accounts"},
}


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(HEALTH).encode() if self.path == "/_local/health" else b"{}"
        self.send_response(200 if self.path == "/_local/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_the_local_stack_gives_its_tables_endpoint_and_dummy_credentials(
    health_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SETTINGS_FILE", raising=False)
    monkeypatch.setenv("USAGE_TABLE", "not-this-one")
    where = target.choose(health_url, "http://ignored:1", "eu-west-1")
    assert where.local
    assert where.endpoint == "http://127.0.0.1:1234"
    assert where.region == "eu-west-1"
    # The local stack's own names win over options and the environment.
    assert where.table("UsageTable", "an-option", "USAGE_TABLE") == "quota-local-UsageTable"
    assert where.credentials == target.LOCAL_CREDENTIALS
    assert os.environ["SETTINGS_FILE"] == str(target.LOCAL_SETTINGS)
    client = where.client()
    assert client.meta.endpoint_url == "http://127.0.0.1:1234"
    assert client.meta.region_name == "eu-west-1"


def test_aws_names_come_from_the_option_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("USAGE_TABLE", "from-env")
    where = target.choose(None, None, None)
    assert not where.local and where.endpoint is None and where.region == "ap-south-1"
    assert where.table("UsageTable", "from-option", "USAGE_TABLE") == "from-option"
    assert where.table("UsageTable", None, "USAGE_TABLE") == "from-env"
    monkeypatch.delenv("USAGE_TABLE")
    with pytest.raises(ValueError, match="USAGE_TABLE"):
        where.table("UsageTable", None, "USAGE_TABLE")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert target.choose(None, None, None).endpoint == "http://127.0.0.1:9"
    assert target.choose(None, "http://127.0.0.1:8", None).endpoint == "http://127.0.0.1:8"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/", "127.0.0.1:3000"])
def test_a_local_url_that_is_not_http_is_refused_before_any_read(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        target.local(url)


def test_a_migration_without_a_table_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools import migrate_usage_shards

    monkeypatch.delenv("USAGE_TABLE", raising=False)
    assert migrate_usage_shards.main([]) == 2
    assert "USAGE_TABLE" in capsys.readouterr().err
