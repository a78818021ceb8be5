"""Browser fixtures: Debian's Chromium driven by Playwright (sync API) against the local stack.

Never `playwright install`: the browser is /usr/bin/chromium (`make system-deps` installs it).
Every page records console errors and uncaught exceptions; a test fails on any it did not
expect (the HTTP errors a test provokes on purpose are declared with `console.expect_http`).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.support.stack import ARTIFACTS, LocalStack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ARTIFACTS / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
# Crediting runs off a queue: give the page's polling time to show it (auto-waiting, no sleeps).
expect.set_options(timeout=20_000)

FAILED_RESOURCE = re.compile(
    r"Failed to load resource: the server responded with a status of (\d+)"
)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        raise RuntimeError(
            "The browser tests need Debian's Chromium at /usr/bin/chromium: run `make system-deps` "
            "(or `apt-get install -y chromium`); never `playwright install`."
        )
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@dataclass
class ConsoleLog:
    """Errors a page reported while it showed the console (not the sandbox's pages)."""

    errors: list[str] = field(default_factory=list)
    allowed_statuses: set[int] = field(default_factory=set)

    def expect_http(self, *statuses: int) -> None:
        """HTTP errors this test provokes on purpose (Chromium logs every failed fetch)."""
        self.allowed_statuses.update(statuses)

    def unexpected(self) -> list[str]:
        def allowed(message: str) -> bool:
            match = FAILED_RESOURCE.search(message)
            return match is not None and int(match.group(1)) in self.allowed_statuses

        return [message for message in self.errors if not allowed(message)]


def _on_console_page(page: Page) -> bool:
    return urlsplit(page.url).path.startswith("/console")


def _watch(page: Page, log: ConsoleLog) -> None:
    def on_console(message: ConsoleMessage) -> None:
        source = urlsplit(message.location.get("url", "")).path
        # Only the console's own messages count: the sandbox's pay pages are someone else's
        # site (and have no favicon; the console declares its own).
        if message.type == "error" and _on_console_page(page) and source != "/favicon.ico":
            log.errors.append(f"{message.text} ({message.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: log.errors.append(f"uncaught: {error}"))


@pytest.fixture
def console_log() -> ConsoleLog:
    return ConsoleLog()


@pytest.fixture
def page(browser: Browser, console_log: ConsoleLog) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(20_000)
    opened = context.new_page()
    _watch(opened, console_log)
    yield opened
    context.close()
    assert console_log.unexpected() == [], "the console logged errors"


@pytest.fixture
def new_page(browser: Browser, console_log: ConsoleLog) -> Iterator[Callable[..., Page]]:
    """More pages (each its own browser context, i.e. its own session) for one test."""
    contexts: list[BrowserContext] = []

    def open_page(
        viewport: ViewportSize | None = None, permissions: list[str] | None = None
    ) -> Page:
        context = browser.new_context(
            viewport=viewport or DESKTOP, accept_downloads=True, permissions=permissions or []
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        opened = context.new_page()
        _watch(opened, console_log)
        return opened

    yield open_page
    for context in contexts:
        context.close()
    assert console_log.unexpected() == [], "the console logged errors"


def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Write tests/artifacts/screenshots/<name>.png (git-ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


# ---------------------------------------------------------------- a caller of its own


class LoopbackProxy:
    """Forwards 127.0.0.1:<port> to the stack while connecting FROM another loopback address.

    The redemption failure limit also counts per source IP, and every test on the shared
    stack connects from 127.0.0.1; a browser cannot pick its source address, so a test that
    fails on purpose browses through this proxy and spends a budget of its own.
    """

    def __init__(self, target_port: int, source_ip: str) -> None:
        self.target_port = target_port
        self.source_ip = source_ip
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LoopbackProxy:
        threading.Thread(target=self._accept, name="loopback-proxy", daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(
                    ("127.0.0.1", self.target_port), timeout=30, source_address=(self.source_ip, 0)
                )
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._closed.set()
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


@pytest.fixture
def own_ip_url(stack: LocalStack) -> Iterator[str]:
    """The stack's base URL as seen from a loopback address no other test uses."""
    octets = uuid.uuid4().bytes
    source_ip = f"127.{octets[0] % 200 + 20}.{octets[1] % 250 + 1}.{octets[2] % 250 + 1}"
    proxy = LoopbackProxy(stack.port, source_ip).start()
    yield proxy.base_url
    proxy.stop()
