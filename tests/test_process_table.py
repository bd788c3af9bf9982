"""The process table on its own (envd/services/process/table.py).

The table only needs a handle's pid, tag, `on_end`, `close()` and fan-out, so
these tests give it minimal handles with a real `Fanout` instead of children;
tests/test_process_rpc.py covers the same rules through a daemon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.gen.process import process_pb2 as pb
from envd.services.process import table as table_module
from envd.services.process.fanout import Fanout
from envd.services.process.handler import ProcessHandle
from envd.services.process.status import ExitStatus
from envd.services.process.table import ProcessTable, check_selector

DONE = ExitStatus(0, True, "exit status 0")
FAILED = ExitStatus(3, True, "exit status 3")


class Handle:
    """What the table uses of a ProcessHandle."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pid: int, tag: str | None = None) -> None:
        self.pid = pid
        self.tag = tag
        self.on_end: object = None
        self.closed = False
        self.fanout = Fanout(loop, lambda: None, lambda: None)

    def close(self) -> None:
        self.closed = True

    def end(self, status: ExitStatus) -> None:
        # What ProcessHandle does once the child is reaped and its output drained.
        assert callable(self.on_end)
        self.on_end(self, status)


def as_handle(handle: Handle) -> ProcessHandle:
    return cast(ProcessHandle, handle)


def by_pid(pid: int) -> pb.SendSignalRequest:
    return pb.SendSignalRequest(process=pb.ProcessSelector(pid=pid))


def by_tag(tag: str) -> pb.SendSignalRequest:
    return pb.SendSignalRequest(process=pb.ProcessSelector(tag=tag))


@pytest.fixture
async def table() -> ProcessTable:
    return ProcessTable(asyncio.get_running_loop())


def add(table: ProcessTable, pid: int, tag: str | None = None) -> Handle:
    handle = Handle(table.loop, pid, tag)
    table.add(as_handle(handle))
    return handle


def not_found(message: str) -> tuple[Code, str]:
    return Code.NOT_FOUND, message


def error_of(call: Callable[[], object]) -> tuple[Code, str]:
    with pytest.raises(ConnectError) as info:
        call()
    return info.value.code, info.value.message


async def test_lookup_by_pid_and_tag(table: ProcessTable) -> None:
    first = add(table, 100, "web")
    second = add(table, 101)
    assert table.get(by_pid(100)) is as_handle(first)
    assert table.get(by_tag("web")) is as_handle(first)
    assert table.get(by_pid(101)) is as_handle(second)
    assert error_of(lambda: table.get(by_pid(102))) == not_found("process with pid 102 not found")
    assert error_of(lambda: table.get(by_tag("db"))) == not_found("process with tag db not found")


@pytest.mark.parametrize(
    "request_",
    [pb.SendSignalRequest(), pb.SendSignalRequest(process=pb.ProcessSelector())],
    ids=["no selector", "empty selector"],
)
async def test_a_missing_selector_is_unimplemented(
    table: ProcessTable, request_: pb.SendSignalRequest
) -> None:
    expected = (Code.UNIMPLEMENTED, "invalid input type *process.ProcessSelector")
    assert error_of(lambda: check_selector(request_)) == expected
    assert error_of(lambda: table.get(request_)) == expected


async def test_an_ended_process_leaves_the_live_table_and_its_exit_is_retained(
    table: ProcessTable,
) -> None:
    handle = add(table, 200, "job")
    handle.end(FAILED)
    assert table.live == {}
    assert error_of(lambda: table.get(by_pid(200))) == not_found("process with pid 200 not found")
    for selector in (pb.ProcessSelector(pid=200), pb.ProcessSelector(tag="job")):
        retained = table.get_retained(selector)
        assert (retained.pid, retained.tag, retained.status) == (200, "job", FAILED)
    assert error_of(lambda: table.get_retained(pb.ProcessSelector(pid=201))) == not_found(
        "process with pid 201 not found"
    )


async def test_a_retained_exit_expires(
    table: ProcessTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(table_module, "RETAIN_EXIT_S", 0.05)
    add(table, 300).end(DONE)
    assert table.get_retained(pb.ProcessSelector(pid=300)).status == DONE
    await asyncio.sleep(0.5)
    assert table.retained == {}


async def test_a_reused_pid_replaces_the_retained_exit_and_its_timer(
    table: ProcessTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(table_module, "RETAIN_EXIT_S", 0.05)
    add(table, 400).end(FAILED)
    newer = add(table, 400)
    assert 400 not in table.retained
    assert table.get(by_pid(400)) is as_handle(newer)
    monkeypatch.setattr(table_module, "RETAIN_EXIT_S", 60.0)
    newer.end(DONE)
    # The first exit's timer would have fired by now; it must not evict the newer exit.
    await asyncio.sleep(0.5)
    assert table.get_retained(pb.ProcessSelector(pid=400)).status == DONE


async def test_a_reused_tag_drops_the_retained_exits_with_that_tag(table: ProcessTable) -> None:
    add(table, 500, "build").end(FAILED)
    add(table, 501, "other").end(DONE)
    add(table, 502, "build")
    assert set(table.retained) == {501}
    assert error_of(lambda: table.get_retained(pb.ProcessSelector(tag="build"))) == not_found(
        "process with tag build not found"
    )


async def test_an_old_handle_ending_late_keeps_the_new_live_one(table: ProcessTable) -> None:
    old = add(table, 600)
    new = add(table, 600)
    old.end(FAILED)
    assert table.get(by_pid(600)) is as_handle(new)
    assert table.get_retained(pb.ProcessSelector(pid=600)).status == FAILED


async def test_close_closes_every_live_handle_and_forgets_everything(table: ProcessTable) -> None:
    live = [add(table, 700), add(table, 701, "t")]
    add(table, 702).end(DONE)
    timer = table.retained[702].timer
    table.close()
    assert all(h.closed for h in live)
    assert (table.live, table.retained) == ({}, {})
    assert timer.cancelled()
