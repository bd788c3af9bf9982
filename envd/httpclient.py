"""A one-shot HTTP/1.1 client for MMDS (host/mmds.py) and the log collector (logs.py).

Both want a fresh connection per request (no keep-alive) and a hard timeout;
h11 (already under uvicorn) does the parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse

import h11

MAX_RESPONSE_BYTES = 1 << 20


class HTTPError(Exception):
    pass


async def request(
    method: str,
    url: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    limit_s: float = 10.0,
) -> tuple[int, bytes]:
    """(status, body) of one request on a fresh connection, all within `limit_s`.

    Raises HTTPError, OSError or TimeoutError.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise HTTPError(f"unsupported URL: {url!r}")
    async with asyncio.timeout(limit_s):
        return await _exchange(parts, method, headers or [], body)


async def _exchange(
    parts: urllib.parse.SplitResult, method: str, headers: list[tuple[str, str]], body: bytes
) -> tuple[int, bytes]:
    host = parts.hostname or ""
    port = parts.port or 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    reader, writer = await asyncio.open_connection(host, port)
    try:
        conn = h11.Connection(h11.CLIENT)
        all_headers = [
            ("Host", parts.netloc),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            *headers,
        ]
        data = conn.send(h11.Request(method=method, target=target, headers=all_headers))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        writer.write(data)
        await writer.drain()
        status = 0
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_RESPONSE_BYTES:
                    raise HTTPError("response too large")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, b"".join(chunks)
    except h11.ProtocolError as e:
        raise HTTPError(f"malformed HTTP response: {e}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
