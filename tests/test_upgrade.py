"""Live upgrade against real daemons: POST /upgrade, the execve, `--resume-handover`, /init.

The workload runs in a private cgroup v2 tree that the daemon freezes (root only;
elsewhere the freeze has nothing to act on and the rest still runs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from envd.gen.process import process_pb2 as pb
from tests.cgroupfs import CgroupFs
from tests.control import ControlDaemon, rfc3339
from tests.daemon import free_port, wait_healthy
from tests.procfs import children, fd_count
from tests.upgrade_helpers import (
    Stream,
    cgroup_tree,
    cmdline,
    connect,
    fs_call,
    handover_header,
    start,
    unary,
    upgrade,
    wait_health,
)

LOCKDOWN = b'{"code":401,"message":"envd not initialized"}\n'
WRITER = 'i=0; while :; do i=$((i+1)); echo "line $i"; sleep 0.01; done'


@pytest.fixture
def cgroups() -> Iterator[CgroupFs | None]:
    with cgroup_tree() as tree:
        yield tree


def _daemon(root: Path, cgroups: CgroupFs | None, *args: str) -> ControlDaemon:
    cg = cgroups.args if cgroups is not None else ["-no-cgroups"]
    return ControlDaemon(root, "-upgrade-bin", str(root / "envd.next"), *cg, *args)


def _init(daemon: ControlDaemon) -> httpx.Response:
    r = daemon.init({"timestamp": rfc3339()})
    assert r.status_code == 204, r.text
    return r


def _lines(data: bytes) -> list[int]:
    """The numbers of the complete `line N` lines."""
    text = data.decode()
    complete = text[: text.rfind("\n") + 1]
    return [int(m) for m in re.findall(r"^line (\d+)$", complete, re.M)]


def _launcher(root: Path) -> bytes:
    """Another build of envd-py as a single file: a launcher for this checkout's interpreter."""
    return f'#!/bin/sh\nexec {sys.executable} -m envd "$@"\n'.encode()


@pytest.mark.parametrize("with_body", [False, True], ids=["re-exec-self", "posted-binary"])
def test_upgrade_keeps_the_workload(
    tmp_path: Path, cgroups: CgroupFs | None, with_body: bool
) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    daemon = _daemon(tmp_path, cgroups)
    streams: list[Stream] = []
    with daemon:
        pid0 = daemon.pid
        r = _init(daemon)
        assert handover_header(r) is None  # only after an upgrade
        url = daemon.url

        long = start(url, "sleep", "600", tag="long")
        shell = start(url, "/bin/bash", "-i", tag="shell", pty=True)
        writer = start(url, "/bin/sh", "-c", WRITER, tag="writer")
        late = start(url, "/bin/sh", "-c", "sleep 4; exit 5", tag="late")
        quick = start(url, "/bin/sh", "-c", "exit 7", tag="quick")
        streams += [long, shell, writer, late, quick]
        assert quick.wait_for(lambda s: s.end() is not None)
        assert quick.end().exit_code == 7  # type: ignore[union-attr]
        watcher_id = fs_call(url, "CreateWatcher", {"path": str(watched)}).json()["watcherId"]
        (watched / "pending.txt").write_text("x")
        assert writer.wait_for(lambda s: len(_lines(s.output())) >= 20)
        time.sleep(0.3)  # the watcher's event reaches its buffer
        live = {long.pid, shell.pid, writer.pid, late.pid}
        fds_before = fd_count(pid0)

        body = _launcher(tmp_path) if with_body else None
        assert upgrade(url, body) is None  # no answer: the execve closed the connection
        assert writer.done.wait(10)  # the old daemon's stream ended with it
        wait_health(url)

        # Same process, new image, handed over.
        assert daemon.proc is not None
        assert daemon.proc.poll() is None
        argv = cmdline(pid0)
        assert argv[-1] == "--resume-handover"
        if with_body:
            assert (tmp_path / "envd.next").read_bytes() == body
        # Until /init: frozen, and locked down (no token crossed the swap).
        if cgroups is not None:
            assert cgroups.frozen("user")
            assert cgroups.frozen("ptys")
        locked = httpx.get(url + "/envs", timeout=10)
        assert (locked.status_code, locked.content) == (401, LOCKDOWN)
        assert upgrade(url).status_code == 401  # type: ignore[union-attr]
        assert not (tmp_path / "run" / "envd-handover.pb").exists()

        r = _init(daemon)
        assert handover_header(r) == {
            "failed": False,
            "procs": 4,
            "procs_failed": 0,
            "retained": 1,
            "retained_failed": 0,
            "watchers": 1,
            "watchers_failed": 0,
        }
        assert handover_header(_init(daemon)) is not None  # on every /init
        if cgroups is not None:
            assert not cgroups.frozen("user")
            assert not cgroups.frozen("ptys")

        listed = {p["pid"]: p.get("tag") for p in unary(url, "List", {}).json()["processes"]}
        if late.pid in listed:  # it may have ended already on a slow machine
            assert listed.pop(late.pid) == "late"
        assert listed == {long.pid: "long", shell.pid: "shell", writer.pid: "writer"}
        listed_full = unary(url, "List", {}).json()["processes"]
        assert next(p for p in listed_full if p["pid"] == long.pid)["config"]["args"] == ["600"]

        by_tag = connect(url, tag="long")
        by_pid = connect(url, pid=long.pid)
        streams += [by_tag, by_pid]
        assert by_tag.pid == by_pid.pid == long.pid

        # The terminal still works, through the carried master.
        term = connect(url, pid=shell.pid)
        streams.append(term)
        sent = unary(
            url,
            "SendInput",
            {"process": {"pid": shell.pid}, "input": {"pty": "ZWNobyBoaSQoKDErMSkpCg=="}},
        )  # "echo hi$((1+1))\n" prints hi2
        assert sent.status_code == 200, sent.text
        assert term.wait_for(lambda s: b"hi2" in s.output("pty"))

        # The writer's output, old stream then new, has every line exactly once.
        again = connect(url, tag="writer")
        streams.append(again)
        assert again.wait_for(lambda s: len(_lines(s.output())) >= 20)
        numbers = _lines(writer.output() + again.output())
        assert numbers == list(range(1, len(numbers) + 1))

        # Ended during or after the swap, and before it: both exit codes arrive.
        ended = connect(url, tag="late")
        streams.append(ended)
        assert ended.wait_for(lambda s: s.end() is not None)
        assert ended.end().exit_code == 5  # type: ignore[union-attr]
        retained = connect(url, pid=quick.pid)
        streams.append(retained)
        assert retained.wait_for(lambda s: s.end() is not None)
        assert retained.end().exit_code == 7  # type: ignore[union-attr]

        events = fs_call(url, "GetWatcherEvents", {"watcherId": watcher_id}).json()
        assert {"name": "pending.txt", "type": "EVENT_TYPE_CREATE"} in [
            {"name": e["name"], "type": e["type"]} for e in events.get("events", [])
        ]

        # Nothing leaked: no descriptor beyond those of the new streams, no stray child.
        for s in streams:
            s.close()
        time.sleep(0.5)
        assert _workload(pid0) == live - {late.pid}
        assert fd_count(pid0) <= fds_before + 2
        for pid in live - {late.pid}:
            assert unary(url, "SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        assert _wait_no_children(pid0)


def _workload(pid: int) -> set[int]:
    """The daemon's children but its fork server (a fork of the daemon: the same argv)."""
    helpers = {c for c in children(pid) if cmdline(c) == cmdline(pid)}
    assert len(helpers) <= 1, f"more than one fork server: {helpers}"
    return children(pid) - helpers


def _wait_no_children(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _workload(pid):
            return True
        time.sleep(0.05)
    return False


def test_chained_upgrade_keeps_processes(tmp_path: Path) -> None:
    """A second upgrade finds the descriptor slots free again."""
    daemon = _daemon(tmp_path, None)
    with daemon:
        _init(daemon)
        s = start(daemon.url, "sleep", "600", tag="twice")
        s.close()
        for round_ in range(2):
            assert upgrade(daemon.url) is None, round_
            wait_health(daemon.url)
            r = _init(daemon)
            assert handover_header(r)["procs"] == 1  # type: ignore[index]
        listed = unary(daemon.url, "List", {}).json()["processes"]
        assert [(p["pid"], p["tag"]) for p in listed] == [(s.pid, "twice")]
        unary(daemon.url, "SendSignal", {"process": {"pid": s.pid}, "signal": "SIGNAL_SIGKILL"})
        assert _wait_no_children(daemon.pid)


# --- failure paths: the old daemon keeps serving, its workload thawed -------------------


def _still_serving(daemon: ControlDaemon, s: Stream, pid0: int, *, kill: bool = True) -> None:
    """The old daemon answers and still has `s`; then `s` is killed (no orphan outlives us)."""
    assert daemon.pid == pid0
    assert "--resume-handover" not in cmdline(pid0)
    listed = unary(daemon.url, "List", {}).json()["processes"]
    assert s.pid in [p["pid"] for p in listed]
    assert not (daemon.run_dir / "envd-handover.pb").exists()
    if kill:
        _kill(daemon.url, s.pid)


def _kill(url: str, pid: int) -> None:
    r = unary(url, "SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
    assert r.status_code == 200, r.text


def test_not_initialized(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, None)
    with daemon:
        s = start(daemon.url, "sleep", "600")
        r = upgrade(daemon.url, b"whatever")
        assert r is not None
        assert (r.status_code, r.text) == (409, "envd not initialized\n")
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert not (tmp_path / "envd.next").exists()  # checked before the body is written
        _still_serving(daemon, s, daemon.pid)
        s.close()


def test_wrong_target(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, None)
    with daemon:
        _init(daemon)
        s = start(daemon.url, "sleep", "600")
        r = upgrade(daemon.url, b"x", {"X-Envd-Upgrade-Bin": "/tmp/elsewhere"})
        assert r is not None
        assert (r.status_code, r.text) == (400, "unsupported upgrade target\n")
        # The configured target itself is accepted (then fails: not executable).
        r = upgrade(daemon.url, b"x", {"X-Envd-Upgrade-Bin": str(tmp_path / "envd.next")})
        assert r is not None
        assert r.status_code == 500
        _still_serving(daemon, s, daemon.pid)
        s.close()


def test_unwritable_target(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "envd.next"
    daemon = ControlDaemon(tmp_path, "-upgrade-bin", str(target), "-no-cgroups")
    with daemon:
        _init(daemon)
        s = start(daemon.url, "sleep", "600")
        r = upgrade(daemon.url, b"#!/bin/sh\n")
        assert r is not None
        assert (r.status_code, r.text) == (
            500,
            f"open {target}: no such file or directory\n",
        )
        _still_serving(daemon, s, daemon.pid)
        s.close()


def test_freeze_failure(tmp_path: Path, cgroups: CgroupFs | None) -> None:
    """`user` never reaches `frozen 1` within 2 s: refused, and everything thawed again."""
    if cgroups is None:
        pytest.skip("needs a cgroup v2 tree (root)")
    daemon = _daemon(tmp_path, cgroups)
    with daemon:
        _init(daemon)
        s = start(daemon.url, "sleep", "600")
        shell = start(daemon.url, "/bin/sh", pty=True)
        # The daemon's writes to user/cgroup.freeze now land in a plain file.
        decoy = tmp_path / "decoy-freeze"
        decoy.write_text("0")
        knob = cgroups.path("user", "cgroup.freeze")
        subprocess.run(["mount", "--bind", str(decoy), str(knob)], check=True)
        try:
            began = time.monotonic()
            r = upgrade(daemon.url)
            took = time.monotonic() - began
        finally:
            subprocess.run(["umount", str(knob)], check=False)
        assert r is not None
        assert (r.status_code, r.text) == (
            500,
            "handover aborted: freeze workload: workload was not frozen before the handover\n",
        )
        assert took >= 1.9
        assert decoy.read_text() == "0"  # the thaw ran
        assert not cgroups.frozen("ptys")
        _still_serving(daemon, s, daemon.pid)
        _kill(daemon.url, shell.pid)
        s.close()
        shell.close()


def test_exec_failure_restores_everything(tmp_path: Path, cgroups: CgroupFs | None) -> None:
    daemon = _daemon(tmp_path, cgroups)
    with daemon:
        pid0 = daemon.pid
        _init(daemon)
        writer = start(daemon.url, "/bin/sh", "-c", WRITER, tag="writer")
        assert writer.wait_for(lambda s: len(_lines(s.output())) >= 5)
        time.sleep(0.2)
        fds_before = fd_count(pid0)
        r = upgrade(daemon.url, b"this is not a program\n")
        assert r is not None
        target = tmp_path / "envd.next"
        assert (r.status_code, r.text) == (500, f"execve {target}: exec format error\n")
        # Thawed, reading again, the same stream continues without a gap.
        if cgroups is not None:
            assert not cgroups.frozen("user")
        seen = len(_lines(writer.output()))
        assert writer.wait_for(lambda s: len(_lines(s.output())) >= seen + 20)
        numbers = _lines(writer.output())
        assert numbers == list(range(1, len(numbers) + 1))
        # The descriptors placed for the swap are closed (the fork server's socket too: it
        # was let go right before the execve, and Popen starts children from here on).
        assert fd_count(pid0) <= fds_before
        echo = start(daemon.url, "/bin/echo", "still starts")
        assert echo.wait_for(lambda x: x.end() is not None)
        assert echo.output() == b"still starts\n"
        echo.close()
        _still_serving(daemon, writer, pid0, kill=False)
        assert not (tmp_path / "run" / "envd-handover.backlog.json").exists()
        # And a later upgrade still works.
        assert upgrade(daemon.url) is None
        wait_health(daemon.url)
        assert handover_header(_init(daemon))["procs"] == 1  # type: ignore[index]
        writer.close()
        unary(
            daemon.url, "SendSignal", {"process": {"pid": writer.pid}, "signal": "SIGNAL_SIGKILL"}
        )
        assert _wait_no_children(pid0)


def test_missing_body_length_is_no_body(tmp_path: Path) -> None:
    """`Content-Length: 0` re-executes the daemon itself; nothing is written."""
    daemon = _daemon(tmp_path, None)
    with daemon:
        _init(daemon)
        assert upgrade(daemon.url, b"") is None
        wait_health(daemon.url)
        assert not (tmp_path / "envd.next").exists()
        assert cmdline(daemon.pid)[:3] == [sys.executable, "-m", "envd"]


def test_access_token_guards_upgrade(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, None)
    with daemon:
        r = daemon.init({"timestamp": rfc3339(), "accessToken": "secret"})
        assert r.status_code == 204
        denied = upgrade(daemon.url)
        assert denied is not None
        assert denied.status_code == 401
        assert upgrade(daemon.url, headers={"X-Access-Token": "secret"}) is None
        wait_health(daemon.url)
        # The token did not cross: locked down until /init sets it again.
        assert httpx.get(daemon.url + "/envs", timeout=10).content == LOCKDOWN
        r = daemon.init({"timestamp": rfc3339(), "accessToken": "secret"})
        assert r.status_code == 204
        assert httpx.get(daemon.url + "/envs", timeout=10).status_code == 401
        ok = httpx.get(daemon.url + "/envs", headers={"X-Access-Token": "secret"}, timeout=10)
        assert ok.status_code == 200


def test_ended_process_output_survives(tmp_path: Path) -> None:
    """Output of a process nobody listened to, ended before the swap, arrives after it."""
    daemon = _daemon(tmp_path, None)
    with daemon:
        _init(daemon)
        s = start(daemon.url, "/bin/sh", "-c", "sleep 3; echo carried; exit 3")
        s.close()  # nobody listens from here on (closed within a keepalive, 1 s)
        time.sleep(4)
        assert upgrade(daemon.url) is None
        wait_health(daemon.url)
        _init(daemon)
        late = connect(daemon.url, pid=s.pid)
        assert late.wait_for(lambda x: x.end() is not None)
        assert late.output() == b"carried\n"
        assert late.end().exit_code == 3  # type: ignore[union-attr]
        late.close()


def test_upgrade_event_order_for_start_stream(tmp_path: Path) -> None:
    """Keepalive-free check that a Start stream's events stay well-formed across the swap."""
    daemon = _daemon(tmp_path, None)
    with daemon:
        _init(daemon)
        s = start(daemon.url, "/bin/sh", "-c", "sleep 1; echo after")
        assert upgrade(daemon.url) is None
        wait_health(daemon.url)
        _init(daemon)
        again = connect(daemon.url, pid=s.pid)
        assert again.wait_for(lambda x: x.end() is not None)
        kinds = [
            e.WhichOneof("event") for e in again.events if e.WhichOneof("event") != "keepalive"
        ]
        assert kinds[0] == "start"
        assert kinds[-1] == "end"
        assert again.output() == b"after\n"
        assert isinstance(again.end(), pb.ProcessEvent.EndEvent)
        s.close()
        again.close()


# --- the incoming side, from a blob written by upstream's rules -------------------------


def _resume_from_fake_upstream(tmp_path: Path, schema: int) -> tuple[subprocess.Popen[bytes], str]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = free_port()
    flags = ["-port", str(port), "-isnotfc", "-no-cgroups", "-run-dir", str(run_dir)]
    flags += ["-mmds-address", "127.0.0.1:9"]
    log = open(tmp_path / "envd.log", "wb")  # noqa: SIM115  # lives as long as the daemon
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fake_upstream_outgoing",
            str(run_dir),
            str(schema),
            "--",
            *flags,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, 30, (tmp_path / "envd.log").read_text)
    return proc, url


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


def test_takes_over_from_upstream_blob(tmp_path: Path) -> None:
    proc, url = _resume_from_fake_upstream(tmp_path, 1)
    try:
        assert "--resume-handover" in cmdline(proc.pid)
        # The carried descriptors were moved off upstream's slots (free for the next swap).
        assert not {200, 201, 202} & {int(fd) for fd in os.listdir(f"/proc/{proc.pid}/fd")}
        r = httpx.post(url + "/init", json={"timestamp": rfc3339()}, timeout=30)
        assert r.status_code == 204
        assert handover_header(r) == {
            "failed": False,
            "procs": 2,
            "procs_failed": 1,
            "retained": 1,
            "retained_failed": 0,
            "watchers": 1,
            "watchers_failed": 0,
        }
        listed = unary(url, "List", {}).json()["processes"]
        assert [(p["tag"], p["config"]["args"][0]) for p in listed] == [("up", "-c")]
        pid = listed[0]["pid"]
        assert pid in children(proc.pid)
        s = connect(url, tag="up")
        assert s.wait_for(lambda x: x.output() == b"from-upstream\n")  # kept in the pipe
        sent = unary(
            url, "SendInput", {"process": {"pid": pid}, "input": {"stdin": "aGVsbG8K"}}
        )  # "hello\n"
        assert sent.status_code == 200, sent.text
        assert s.wait_for(lambda x: x.output() == b"from-upstream\ngot hello\n")
        gone = connect(url, tag="gone")
        assert gone.wait_for(lambda x: x.end() is not None)
        assert (gone.pid, gone.end().exit_code) == (4_000_000, 9)  # type: ignore[union-attr]
        events = fs_call(url, "GetWatcherEvents", {"watcherId": "wupstream"})
        assert events.status_code == 200, events.text
        unary(url, "SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        assert s.wait_for(lambda x: x.end() is not None)
        s.close()
        gone.close()
    finally:
        _stop(proc)


def test_refuses_newer_schema(tmp_path: Path) -> None:
    proc, url = _resume_from_fake_upstream(tmp_path, 3)
    try:
        r = httpx.post(url + "/init", json={"timestamp": rfc3339()}, timeout=30)
        assert r.status_code == 204
        header = handover_header(r)
        assert header is not None
        assert header["failed"] is True
        assert header["procs"] == 0
        assert "handover schema 3 exceeds max supported 2" in (tmp_path / "envd.log").read_text()
        assert unary(url, "List", {}).json().get("processes", []) == []
    finally:
        for pid in children(proc.pid):
            os.kill(pid, 9)
        _stop(proc)


def test_remaining_timeout_is_carried(tmp_path: Path) -> None:
    """A 15 s lifetime still ends the process after the swap, counting from the thaw."""
    daemon = _daemon(tmp_path, None)
    with daemon:
        _init(daemon)
        began = time.monotonic()
        s = start(daemon.url, "sleep", "600", headers={"Connect-Timeout-Ms": "15000"})
        s.close()  # the lifetime is the process's, not the stream's
        assert upgrade(daemon.url) is None
        wait_health(daemon.url)
        _init(daemon)
        if time.monotonic() - began > 12:
            pytest.skip("machine too slow to tell the carried timeout apart")
        late = connect(daemon.url, pid=s.pid)
        assert late.wait_for(lambda x: x.end() is not None, timeout=40)
        assert time.monotonic() - began >= 14.5  # not killed early
        assert late.end().status == "signal: killed"  # type: ignore[union-attr]
        late.close()
