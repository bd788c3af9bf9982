"""Sending a file as a response body with bounded memory.

Reads (and gzip compression) run in a worker thread one chunk ahead of the
socket, so disk, compression and network overlap; at most two chunks are in
memory per download. A client that goes away stops the transfer at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial

from envd.api.files.serve import Segment
from envd.api.responses import send_json_error
from envd.asgi import Receive, Scope, Send
from envd.fs.errors import errno_text

log = logging.getLogger("envd.api.files")

CHUNK = 1 << 20
GZIP_LEVEL = 6  # Go's gzip.DefaultCompression


class ShortRead(Exception):
    """The file shrank while being sent: the response is cut short, as upstream's."""


class _RunAhead:
    """Runs blocking jobs in a worker thread, the next one while the caller
    uses the previous result. `close_when_idle` closes the fd only after the
    job still running (if any) has finished, so no read ever sees a closed
    (or reused) descriptor, even when the request is cancelled."""

    def __init__(self, jobs: Iterator[Callable[[], bytes]]) -> None:
        self._jobs = jobs
        self._pending: asyncio.Future[bytes] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        job = next(self._jobs, None)
        self._pending = loop.run_in_executor(None, job) if job else None
        while self._pending is not None:
            data = await asyncio.shield(self._pending)
            job = next(self._jobs, None)
            self._pending = loop.run_in_executor(None, job) if job else None
            if data:
                yield data

    def close_when_idle(self, fd: int) -> None:
        pending = self._pending
        if pending is None or pending.done():
            os.close(fd)
        else:
            pending.add_done_callback(lambda _f: os.close(fd))


def _segment_jobs(fd: int, segments: list[Segment]) -> Iterator[Callable[[], bytes]]:
    for segment in segments:
        if segment.data:
            data = segment.data
            yield partial(bytes, data)
            continue
        offset, remaining = segment.offset, segment.length
        while remaining > 0:
            size = min(CHUNK, remaining)
            yield partial(_pread_full, fd, size, offset)
            offset += size
            remaining -= size


def _pread_full(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            raise ShortRead
        data += more
    return data


def _gzip_jobs(fd: int) -> Iterator[Callable[[], bytes]]:
    """Compresses until end of file (the size is never trusted: pseudo-files
    and growing files stream to their actual end, as upstream)."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    eof = False

    def step() -> bytes:
        nonlocal eof
        data = os.read(fd, CHUNK)
        if data:
            return compressor.compress(data)
        eof = True
        return compressor.flush()

    while not eof:
        yield step


class FileBody:
    """ASGI response: status and headers, then file content; closes `fd`."""

    def __init__(
        self,
        fd: int,
        status: int,
        headers: list[tuple[str, str]],
        segments: list[Segment] | None = None,
        gzip: bool = False,
    ) -> None:
        self.fd = fd
        self.status = status
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self.segments = segments or []
        self.gzip = gzip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        jobs = _gzip_jobs(self.fd) if self.gzip else _segment_jobs(self.fd, self.segments)
        chunks = _RunAhead(jobs)
        content = chunks.__aiter__()
        try:
            try:
                first = await anext(content, None)
            except OSError as e:
                # Nothing sent yet (/proc/self/mem, a dead device): a proper error.
                await send_json_error(send, 500, f"error reading file: {errno_text(e.errno)}")
                return
            await send(
                {"type": "http.response.start", "status": self.status, "headers": self.headers}
            )
            if first is not None:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in content:
                if gone.done():
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (ShortRead, OSError) as e:
            # Returning without finishing makes the server drop the connection.
            if isinstance(e, OSError):
                log.warning("reading a file being sent failed: %s", errno_text(e.errno))
            return
        finally:
            gone.cancel()
            chunks.close_when_idle(self.fd)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
