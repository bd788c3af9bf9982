"""A fake Firecracker MMDS (v2 token flow) and log collector on loopback."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def sha512_hex(token: str) -> str:
    return hashlib.sha512(token.encode()).hexdigest()


class FakeMMDS:
    def __init__(self) -> None:
        self.sandbox_id = "sbx-test"
        self.template_id = "tpl-test"
        self.address = ""  # log collector URL handed to envd
        self.access_token_hash: str | None = None  # None: key absent
        self.failing = False  # token PUT answers with an empty body
        self.token_puts = 0
        self.metadata_gets = 0
        self.logs: list[dict[str, Any]] = []
        self._tokens: set[str] = set()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address_port(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def collector_url(self) -> str:
        return f"http://{self.address_port}/logs"

    def set_token(self, token: str | None) -> None:
        """What the orchestrator writes before /init: hash of the token, or of "" for none."""
        self.access_token_hash = sha512_hex(token or "")

    def metadata(self) -> dict[str, str]:
        data = {"instanceID": self.sandbox_id, "envID": self.template_id, "address": self.address}
        if self.access_token_hash is not None:
            data["accessTokenHash"] = self.access_token_hash
        return data

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                with fake._lock:
                    fake.token_puts += 1
                    if self.path != "/latest/api/token" or fake.failing:
                        self._reply(500, b"")
                        return
                    if self.headers.get("X-metadata-token-ttl-seconds") != "60":
                        self._reply(400, b"")
                        return
                    token = f"mmds-token-{fake.token_puts}"
                    fake._tokens.add(token)
                self._reply(200, token.encode())

            def do_GET(self) -> None:
                with fake._lock:
                    fake.metadata_gets += 1
                    ok = self.headers.get("X-metadata-token") in fake._tokens
                    body = json.dumps(fake.metadata()).encode()
                if self.path != "/" or not ok:
                    self._reply(401, b"")
                    return
                self._reply(200, body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(length)
                if self.path == "/logs":
                    with fake._lock:
                        fake.logs.append(json.loads(data))
                self._reply(200, b"")

        return Handler

    def __enter__(self) -> FakeMMDS:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
