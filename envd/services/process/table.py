"""Live processes by pid, and the exits of recently ended ones (for a late Connect)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.gen.process import process_pb2
from envd.services.process.backlog import Backlog
from envd.services.process.handler import ProcessHandle
from envd.services.process.status import ExitStatus

RETAIN_EXIT_S = 30.0


@dataclass(slots=True)
class RetainedExit:
    pid: int
    tag: str | None
    status: ExitStatus
    timer: asyncio.TimerHandle
    # Output nobody received before the end: the next Connect gets it, once.
    backlog: Backlog | None = None


def _selector_error(selector: process_pb2.ProcessSelector) -> ConnectError:
    if selector.WhichOneof("selector") == "pid":
        return ConnectError(Code.NOT_FOUND, f"process with pid {selector.pid} not found")
    return ConnectError(Code.NOT_FOUND, f"process with tag {selector.tag} not found")


def check_selector(request: object) -> process_pb2.ProcessSelector:
    """The request's selector; absent or empty is upstream's `unimplemented`."""
    selector: process_pb2.ProcessSelector = request.process  # type: ignore[attr-defined]
    if not request.HasField("process") or selector.WhichOneof("selector") is None:  # type: ignore[attr-defined]
        raise ConnectError(Code.UNIMPLEMENTED, "invalid input type *process.ProcessSelector")
    return selector


class ProcessTable:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.live: dict[int, ProcessHandle] = {}
        self.retained: dict[int, RetainedExit] = {}

    def add(self, handle: ProcessHandle) -> None:
        self._forget(self.retained.pop(handle.pid, None))
        if handle.tag is not None:
            for pid in [p for p, r in self.retained.items() if r.tag == handle.tag]:
                self._forget(self.retained.pop(pid))
        self.live[handle.pid] = handle
        handle.on_end = self._ended

    def _ended(self, handle: ProcessHandle, status: ExitStatus) -> None:
        pid = handle.pid
        self._forget(self.retained.pop(pid, None))
        timer = self.loop.call_later(RETAIN_EXIT_S, self._expire, pid)
        self.retained[pid] = RetainedExit(pid, handle.tag, status, timer, handle.fanout.backlog)
        if self.live.get(pid) is handle:
            del self.live[pid]

    def retain(
        self,
        pid: int,
        tag: str | None,
        status: ExitStatus,
        ttl: float,
        backlog: Backlog | None = None,
    ) -> None:
        """Keep an exit for `ttl` seconds (an exit carried across a live upgrade)."""
        self._forget(self.retained.pop(pid, None))
        timer = self.loop.call_later(ttl, self._expire, pid)
        self.retained[pid] = RetainedExit(pid, tag, status, timer, backlog)

    def _expire(self, pid: int) -> None:
        # Each entry has its own timer, cancelled when replaced: never evicts a newer one.
        self._forget(self.retained.pop(pid, None))

    @staticmethod
    def _forget(entry: RetainedExit | None) -> None:
        if entry is not None:
            entry.timer.cancel()
            if entry.backlog is not None:
                entry.backlog.clear()

    def get(self, request: object) -> ProcessHandle:
        selector = check_selector(request)
        if selector.WhichOneof("selector") == "pid":
            handle = self.live.get(selector.pid)
        else:
            # Upstream's scan can stop early at another tag (a bug); any match will do.
            handle = next((h for h in self.live.values() if h.tag == selector.tag), None)
        if handle is None:
            raise _selector_error(selector)
        return handle

    def get_retained(self, selector: process_pb2.ProcessSelector) -> RetainedExit:
        if selector.WhichOneof("selector") == "pid":
            entry = self.retained.get(selector.pid)
        else:
            entry = next((r for r in self.retained.values() if r.tag == selector.tag), None)
        if entry is None:
            raise _selector_error(selector)
        return entry

    def close(self) -> None:
        for handle in list(self.live.values()):
            handle.close()
        self.live.clear()
        for entry in self.retained.values():
            self._forget(entry)
        self.retained.clear()
