"""A slow OpenAI-compatible upstream on 127.0.0.1 for the LiteLLM proxy's tests: it streams a
chat completion one small chunk every `interval` seconds, so that a client can leave in the
middle of it (LiteLLM's mock responses stream everything at once)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SlowUpstream:
    def __init__(self, chunks: int = 200, interval: float = 0.1) -> None:
        self.chunks = chunks
        self.interval = interval
        self.requests = 0
        self.disconnects = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for index in range(upstream.chunks):
                        self.wfile.write(_event(index))
                        self.wfile.flush()
                        time.sleep(upstream.interval)
                    self.wfile.write(b"data: [DONE]\n\n")
                except OSError:
                    upstream.disconnects += 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlowUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _event(index: int) -> bytes:
    chunk = {
        "id": "chatcmpl-slow",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": f"word{index} "}, "finish_reason": None}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()
