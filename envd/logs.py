"""Structured logging: JSON lines as upstream's zerolog writes them.

Sinks: stdout with `-verbose`; the HTTP exporter in Firecracker mode, which
buffers lines (bounded) until MMDS names a collector, then POSTs each line
there. Log calls pass fields through `extra={...}`; nothing that logs here may
put payload bytes, tokens or env values in a message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import itertools
import json
import logging
import sys
import threading
import time
from typing import Any

from envd import httpclient

MAX_LINE_BYTES = 192 << 10
MAX_BUFFERED_BYTES = 8 << 20
EXPORT_TIMEOUT_S = 10.0
ERROR_LOG_FLOOR_S = 60.0

_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}
# Attributes every LogRecord has; anything else came in through `extra`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_operation_ids = itertools.count(1)


def operation_id() -> str:
    """A process-wide counter, one value per RPC or HTTP operation."""
    return str(next(_operation_ids))


def _logger_name(name: str) -> str:
    for part in ("process", "filesystem", "port"):
        if name.startswith(f"envd.services.{part}") or name.startswith(f"envd.{part}"):
            return "port-forwarder" if part == "port" else part
    return "envd"


def _timestamp(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    nanos = round(created * 1e9) % 1_000_000_000
    fraction = f".{nanos:09d}".rstrip("0").rstrip(".")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"level": _LEVELS.get(record.levelno, "info")}
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        line.setdefault("logger", _logger_name(record.name))
        if record.exc_info and record.exc_info[1] is not None:
            line.setdefault("error", str(record.exc_info[1]))
        line["timestamp"] = _timestamp(record.created)
        line["message"] = record.getMessage()
        return json.dumps(line, default=str, ensure_ascii=False, separators=(",", ":"))


class RateLimiter:
    """At most one report per `floor` seconds, counting what was suppressed."""

    def __init__(self, floor: float) -> None:
        self.floor = floor
        self._last: float | None = None
        self._suppressed = 0
        self._lock = threading.Lock()

    def allow(self) -> tuple[bool, int]:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last <= self.floor:
                self._suppressed += 1
                return False, 0
            self._last = now
            suppressed, self._suppressed = self._suppressed, 0
            return True, suppressed


class HTTPExporter(logging.Handler):
    """Ships each log line to the MMDS-provided collector, one POST per line.

    Lines wait in a queue capped at 8 MiB (oldest dropped first; a line over
    192 KiB is dropped at once): upstream once queued without bound while the
    collector was unreachable and ran the guest out of memory.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JSONFormatter())
        self._lines: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._guard = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._sandbox_id = ""
        self._template_id = ""
        self._address = ""
        self._send_errors = RateLimiter(ERROR_LOG_FLOOR_S)
        self._oversized = RateLimiter(ERROR_LOG_FLOOR_S)

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).encode()
        except Exception:  # a log call must never break its caller
            return
        self.add_line(line)

    def add_line(self, line: bytes) -> None:
        if len(line) > MAX_LINE_BYTES:
            allowed, suppressed = self._oversized.allow()
            if allowed:
                _stderr(
                    f"dropped log line exceeding {MAX_LINE_BYTES} bytes"
                    f" ({suppressed} suppressed since last log)"
                )
            return
        with self._guard:
            while self._lines and self._bytes + len(line) > MAX_BUFFERED_BYTES:
                self._bytes -= len(self._lines.popleft())
            self._lines.append(line)
            self._bytes += len(line)
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                loop.call_soon_threadsafe(wake.set)

    def configure(self, sandbox_id: str, template_id: str, address: str) -> None:
        """MMDS options arrived: start (or retarget) the sender."""
        self._sandbox_id, self._template_id, self._address = sandbox_id, template_id, address
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._wake.set()
            self._task = asyncio.create_task(self._send_loop())

    async def _send_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._guard:
                lines, self._lines, self._bytes = self._lines, collections.deque(), 0
            for line in lines:
                await self._send(line)

    async def _send(self, line: bytes) -> None:
        try:
            data = json.loads(line)
            data["instanceID"] = self._sandbox_id
            data["envID"] = self._template_id
            body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        except ValueError as e:
            _stderr(f"error adding instance logging options to JSON: {e}")
            return
        try:
            status, _ = await httpclient.request(
                "POST",
                self._address,
                [("Content-Type", "application/json")],
                body,
                limit_s=EXPORT_TIMEOUT_S,
            )
            if not 200 <= status < 300:
                raise httpclient.HTTPError(f"collector returned {status}")
        except (OSError, TimeoutError, httpclient.HTTPError) as e:
            allowed, suppressed = self._send_errors.allow()
            if allowed:
                _stderr(
                    f"error sending instance logs: {e!r} ({suppressed} suppressed since last log)"
                )

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


def setup_logging(verbose: bool, exporter: HTTPExporter | None) -> None:
    """Send the `envd` loggers (debug and up) to the JSON sinks.

    Other libraries' warnings (uvicorn's tracebacks included) join the same
    sinks and, whatever the sinks, also reach stderr in plain text, as a Go
    panic would.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if verbose:
        stdout = logging.StreamHandler(sys.stdout)
        stdout.setFormatter(JSONFormatter())
        root.addHandler(stdout)
    if exporter is not None:
        root.addHandler(exporter)
    root.setLevel(logging.WARNING)
    logging.getLogger("envd").setLevel(logging.DEBUG)
    plain = logging.StreamHandler(sys.stderr)
    plain.setLevel(logging.WARNING)
    uvicorn = logging.getLogger("uvicorn")
    uvicorn.addHandler(plain)
    uvicorn.setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True
