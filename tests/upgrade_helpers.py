"""Helpers for the live-upgrade tests: process streams by hand, a private cgroup tree."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from envd.gen.process import process_pb2 as pb
from tests.cgroupfs import CgroupFs
from tests.connect_raw import PROCESS, envelope, raw_frames

AS_USER = {"Authorization": "Basic " + base64.b64encode(b"user:").decode()}
PROTO_STREAM = {"content-type": "application/connect+proto"}


def _post_stream(
    client: httpx.Client, url: str, method: str, message: Any, extra: dict[str, str]
) -> Any:
    return client.stream(
        "POST",
        url + PROCESS + method,
        content=envelope(message.SerializeToString()),
        # Keepalives every second let the reading thread notice `close`.
        headers={**PROTO_STREAM, **AS_USER, "Keepalive-Ping-Interval": "1", **extra},
        timeout=httpx.Timeout(60, read=30),
    )


class Stream:
    """A Start or Connect stream read by a thread: events in arrival order until it ends."""

    def __init__(
        self, url: str, method: str, message: Any, headers: dict[str, str] | None = None
    ) -> None:
        self.events: list[pb.ProcessEvent] = []
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.done = threading.Event()
        self._closing = threading.Event()
        self._client = httpx.Client()
        self._cm = _post_stream(self._client, url, method, message, headers or {})
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.started.wait(30), f"no start event: {self.error!r}"

    def _run(self) -> None:
        try:
            with self._cm as response:
                assert response.status_code == 200, response.read()
                for flags, payload in raw_frames(response):
                    if flags & 2 or self._closing.is_set():
                        break
                    self.events.append(pb.StartResponse.FromString(payload).event)
                    self.started.set()
        except BaseException as e:
            self.error = e
        finally:
            self.started.set()
            self.done.set()

    @property
    def pid(self) -> int:
        return self.events[0].start.pid

    def output(self, member: str = "stdout") -> bytes:
        return b"".join(getattr(e.data, member) for e in self.events if e.HasField("data"))

    def end(self) -> pb.ProcessEvent.EndEvent | None:
        ends = [e.end for e in self.events if e.HasField("end")]
        return ends[0] if ends else None

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            if self.done.is_set():
                return bool(predicate(self))
            time.sleep(0.02)
        return bool(predicate(self))

    def close(self) -> None:
        self._closing.set()
        self._thread.join(10)
        self._client.close()


def start(
    url: str,
    cmd: str,
    *args: str,
    tag: str | None = None,
    pty: bool = False,
    stdin: bool | None = None,
    headers: dict[str, str] | None = None,
) -> Stream:
    request = pb.StartRequest(process=pb.ProcessConfig(cmd=cmd, args=list(args)))
    if tag is not None:
        request.tag = tag
    if pty:
        request.pty.size.cols, request.pty.size.rows = 80, 24
    if stdin is not None:
        request.stdin = stdin
    return Stream(url, "Start", request, headers)


def connect(url: str, *, pid: int | None = None, tag: str | None = None) -> Stream:
    request = pb.ConnectRequest()
    if pid is not None:
        request.process.pid = pid
    else:
        request.process.tag = tag or ""
    return Stream(url, "Connect", request)


def unary(url: str, method: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        url + PROCESS + method,
        json=body,
        headers={"content-type": "application/json", **AS_USER},
        timeout=30,
    )


def fs_call(url: str, method: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        url + "/filesystem.Filesystem/" + method,
        json=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )


def upgrade(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> httpx.Response | None:
    """POST /upgrade; None when the connection closed without an answer (success)."""
    try:
        return httpx.post(url + "/upgrade", content=body or b"", headers=headers or {}, timeout=60)
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return None


def wait_health(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1).status_code == 204:
                return
        time.sleep(0.05)
    raise AssertionError("daemon did not come back")


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def handover_header(response: httpx.Response) -> dict[str, Any] | None:
    raw = response.headers.get("x-envd-handover")
    return None if raw is None else json.loads(raw)


@contextlib.contextmanager
def cgroup_tree() -> Iterator[CgroupFs | None]:
    """A private cgroup tree the daemon manages, or None where cgroup v2 cannot be mounted."""
    if os.geteuid() != 0:
        yield None
        return
    try:
        fs = CgroupFs()
    except OSError:
        yield None
        return
    try:
        yield fs
    finally:
        fs.close()
