"""Pieces of the live upgrade on their own: descriptor slots, argv, the post-upgrade status."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from envd.api.handover import HandoverResult, HandoverStatus
from envd.upgrade import fds
from envd.upgrade.outgoing import RESUME_FLAG, exec_argv


def test_slots_are_upstreams() -> None:
    assert [fds.slot(0, m) for m in (fds.STDOUT, fds.STDERR, fds.STDIN, fds.TTY)] == [
        200,
        201,
        202,
        203,
    ]
    assert fds.slot(3, fds.TTY) == 218


def test_relocation_places_inheritable_and_refuses_a_taken_slot() -> None:
    r, w = os.pipe()
    target = fds.slot(40, fds.STDOUT)
    relocation = fds.Relocation()
    try:
        assert relocation.place(r, target) == target
        assert os.get_inheritable(target)
        assert relocation.place(None, target + 1) == -1
        with pytest.raises(fds.FdError, match=f"handover fd target {target} already in use"):
            relocation.place(w, target)
    finally:
        relocation.undo()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(target)  # undo closed it
    os.close(r)
    os.close(w)


def test_take_moves_off_the_slot() -> None:
    r, w = os.pipe()
    slot = fds.slot(41, fds.STDIN)
    os.dup2(w, slot, inheritable=True)
    os.close(w)
    moved = fds.take(slot)
    assert moved is not None
    assert moved != slot
    assert not os.get_inheritable(moved)
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(slot)
    os.write(moved, b"x")
    assert os.read(r, 1) == b"x"
    os.close(moved)
    os.close(r)
    assert fds.take(-1) is None
    with pytest.raises(OSError, match="is not open"):
        fds.take(fds.slot(42, fds.STDOUT))


def test_exec_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/x/envd/__main__.py", "-port", "1", RESUME_FLAG])
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "utf8", "-m", "envd", "-port", "1"])
    assert exec_argv("/usr/bin/envd.next") == (
        "/usr/bin/envd.next",
        ["/usr/bin/envd.next", "-port", "1", RESUME_FLAG],
    )
    program, argv = exec_argv(None)
    assert program == sys.executable
    assert argv == [sys.executable, "-X", "utf8", "-m", "envd", "-port", "1", RESUME_FLAG]


def test_header_is_gos_json() -> None:
    result = HandoverResult(procs=3, procs_failed=1, retained=2, watchers=1)
    assert result.header() == (
        '{"failed":false,"procs":3,"procs_failed":1,"retained":2,"retained_failed":0,'
        '"watchers":1,"watchers_failed":0}'
    )
    assert list(json.loads(result.header())) == [
        "failed",
        "procs",
        "procs_failed",
        "retained",
        "retained_failed",
        "watchers",
        "watchers_failed",
    ]


async def test_fallback_thaw_only_without_init() -> None:
    for initialized in (False, True):
        status = HandoverStatus(result=HandoverResult())
        thawed: list[str] = []

        async def thaw(log: list[str] = thawed) -> None:
            log.append("thaw")

        def done(value: bool = initialized) -> bool:
            return value

        def timers(log: list[str] = thawed) -> None:
            log.append("timers")

        status.keep_frozen(thaw, done, fallback_s=0.05)
        status.after_thaw(timers)
        await asyncio.sleep(0.3)
        assert thawed == ([] if initialized else ["thaw", "timers"])
        await status.thaw_now()  # the /init thaw; runs once at most
        assert thawed == ["thaw", "timers"]
        await status.thaw_now()
        assert thawed == ["thaw", "timers"]
        status.close()


async def test_after_thaw_runs_at_once_when_not_frozen() -> None:
    status = HandoverStatus()
    ran: list[int] = []
    status.after_thaw(lambda: ran.append(1))
    assert ran == [1]
    assert not status.resumed
