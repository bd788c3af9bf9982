"""A bound on request heads for uvicorn's httptools protocol.

Go's net/http refuses a request line plus headers beyond 1 MiB (+4 KiB of
slack) with `431 Request Header Fields Too Large`. httptools has no limit:
it buffers a header value of any size (RSS grew ~2x the bytes sent, and the
time per chunk grew with it) before our code sees the request, so a client
without a token could exhaust memory. h11 has `h11_max_incomplete_event_size`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

# Go's http.DefaultMaxHeaderBytes plus the 4096 bytes it tolerates beyond it.
MAX_HEAD_BYTES = (1 << 20) + 4096
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n"
    b"431 Request Header Fields Too Large"
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # Bytes received since the current request's head began.
        self._head_bytes = 0
        self._in_head = True

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.transport.write(_TOO_LARGE)
                self.transport.close()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True
        super().on_message_complete()
