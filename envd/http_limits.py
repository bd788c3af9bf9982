"""A request head bounded as Go's net/http bounds it (`MaxHeaderBytes`, 1 MiB).

httptools (uvicorn's fast HTTP/1.1 parser) accumulates a header of any size:
a client sending a 64 MiB header line grows the daemon by 64 MiB. Go answers
`431 Request Header Fields Too Large` once the head exceeds 1 MiB + 4 KiB;
so do we, counting the bytes received while the head is still incomplete.
(The h11 fallback has its own limit, `h11_max_incomplete_event_size`.)
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = (1 << 20) + 4096
_431 = b"431 Request Header Fields Too Large"
_431_RESPONSE = (
    b"HTTP/1.1 " + _431 + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_431)).encode() + b"\r\n\r\n" + _431
)


class BoundedHeadHttpToolsProtocol(HttpToolsProtocol):
    _head_bytes = 0
    _in_head = True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Bytes of the next request's head start counting from here.
        self._in_head = True
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        too_large = self._in_head and self._head_bytes > MAX_HEADER_BYTES
        if too_large and not self.transport.is_closing():
            self.transport.write(_431_RESPONSE)
            self.transport.close()
