"""cgroups, `/freeze`, `/unfreeze` and the thaw in `/init`, against real daemons and real cgroups.

Every daemon here manages a private cgroup v2 tree (tests/cgroupfs.py);
freezing is proved by behaviour: a counter stops printing while frozen and
carries on, without a gap, after the thaw.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import Sandbox
from e2b.sandbox.commands.command_handle import PtySize

from tests.cgroupfs import CgroupFs
from tests.connect_raw import stream_json
from tests.control import sdk_sandbox
from tests.daemon import Daemon, wait_until

COUNTER = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done"
FREEZE_KEYS = [
    "allowlisted",
    "failed",
    "frozen",
    "mode",
    "notFrozen",
    "preFrozen",
    "requested",
    "sweepMs",
    "truncated",
    "unobservable",
    "visited",
    "waitMs",
]


@pytest.fixture
def daemon(cgroupfs: CgroupFs) -> Iterator[Daemon]:
    with Daemon(*cgroupfs.args, "-thaw-watchdog-ms", "120000") as d:
        yield d


@pytest.fixture
def http(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        yield client


class Lines:
    """A running command's output, collected by a thread as it arrives."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.text = ""
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        # The command is killed at the end of every test, which the SDK raises.
        with contextlib.suppress(Exception):
            self.handle.wait(on_stdout=self._add, on_pty=self._add)

    def _add(self, chunk: str | bytes) -> None:
        self.text += chunk.decode() if isinstance(chunk, bytes) else chunk

    @property
    def numbers(self) -> list[int]:
        parts = self.text.replace("\r", "").split("\n")[:-1]
        return [int(x) for x in parts if x.strip().isdigit()]

    def stop(self) -> None:
        self.handle.kill()
        self._thread.join(10)


def counter(sbx: Sandbox) -> Lines:
    return Lines(sbx.commands.run(COUNTER, background=True, timeout=0, user="user"))


def pty_counter(sbx: Sandbox) -> Lines:
    handle = sbx.pty.create(PtySize(rows=24, cols=80), timeout=0, user="user")
    lines = Lines(handle)
    sbx.pty.send_stdin(handle.pid, f"stty -echo; {COUNTER}\n".encode())
    return lines


def assert_stopped(lines: Lines, seconds: float = 1.0) -> None:
    # A line already in flight may still arrive right after the freeze.
    time.sleep(0.3)
    before = len(lines.numbers)
    time.sleep(seconds)
    assert len(lines.numbers) == before, "output went on while frozen"


def assert_resumes(lines: Lines) -> None:
    count = len(lines.numbers)
    assert wait_until(lambda: len(lines.numbers) >= count + 5)
    # Consecutive from the first (a PTY's first line may share the prompt's).
    numbers = lines.numbers
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "lost output"


def pids_of(fs: CgroupFs, *parts: str) -> list[int]:
    return fs.all_procs(*parts)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return next(line for line in f.read().splitlines() if line.startswith("0::"))[3:]


def dirs(fs: CgroupFs, name: str) -> list[Path]:
    return [p for p in fs.path(name).iterdir() if p.is_dir()]


# --- the manager -----------------------------------------------------------


def test_cgroups_created_and_commands_placed(daemon: Daemon, cgroupfs: CgroupFs) -> None:
    for name in ("user", "ptys", "socats"):
        assert cgroupfs.path(name).is_dir()
    # This machine's v2 tree has no memory/cpu/io controllers: skipped, not fatal.
    assert 'cgroup property "memory.max" unavailable' in daemon.output()
    sbx = sdk_sandbox(daemon, None)
    cmd = sbx.commands.run("sh -c 'sleep 600' & sleep 600", background=True, user="user")
    pty = sbx.pty.create(PtySize(rows=24, cols=80), user="user")
    try:
        assert wait_until(lambda: len(pids_of(cgroupfs, "user")) >= 3)
        user_cgroups = dirs(cgroupfs, "user")
        assert len(user_cgroups) == 1
        # The command and all it started, in the command's own cgroup.
        own = cgroupfs.procs("user", user_cgroups[0].name)
        assert cmd.pid in own
        assert sorted(own) == sorted(pids_of(cgroupfs, "user"))
        assert cgroupfs.procs("user") == []
        assert any(pty.pid in cgroupfs.procs("ptys", p.name) for p in dirs(cgroupfs, "ptys"))
    finally:
        cmd.kill()
        pty.kill()
    # Each command's cgroup goes with it.
    assert wait_until(lambda: not dirs(cgroupfs, "user") and not dirs(cgroupfs, "ptys"))


def _own_cgroup(daemon: Daemon, tag: str | None) -> str:
    start: dict[str, object] = {
        "process": {"cmd": "/bin/cat", "args": ["/proc/self/cgroup"]},
        **({"tag": tag} if tag else {}),
    }
    events, _ = stream_json(daemon.url, "Start", start)
    out = b"".join(
        base64.b64decode(e["event"]["data"]["stdout"])
        for e in events
        if "stdout" in e.get("event", {}).get("data", {})
    )
    return next(line for line in out.decode().splitlines() if line.startswith("0::"))[3:]


def test_children_start_inside_their_cgroup(daemon: Daemon, cgroupfs: CgroupFs) -> None:
    """`cat /proc/self/cgroup` exits at once: it must already have started inside."""
    root = "/" + cgroupfs.root.name
    assert _own_cgroup(daemon, None).startswith(f"{root}/user/cmd-")
    assert _own_cgroup(daemon, "mine").startswith(f"{root}/user/cmd-")
    assert _own_cgroup(daemon, "_system") == cgroup_of(daemon.pid)
    events, _ = stream_json(
        daemon.url,
        "Start",
        {"process": {"cmd": "/bin/cat", "args": ["/proc/self/cgroup"]}, "pty": {"size": {}}},
    )
    out = b"".join(
        base64.b64decode(e["event"]["data"]["pty"])
        for e in events
        if "pty" in e.get("event", {}).get("data", {})
    )
    assert f"0::{root}/ptys/cmd-".encode() in out


def test_no_cgroups_touches_nothing(cgroupfs: CgroupFs) -> None:
    with Daemon("-no-cgroups", *cgroupfs.args) as d:
        assert not [p for p in cgroupfs.root.iterdir() if p.is_dir()]
        assert "cgroups disabled via --no-cgroups" in d.output()
        r = httpx.post(d.url + "/freeze", params={"maxWaitMs": 500})
        assert r.status_code == 200
        body = r.json()
        # Writes "accepted", state unreadable: nothing to wait for.
        assert (body["requested"], body["unobservable"], body["frozen"]) == (2, 2, 0)
        assert body["notFrozen"] == 0
        assert httpx.post(d.url + "/unfreeze").status_code == 204


def test_root_that_is_not_cgroup2_falls_back(tmp_path: Path) -> None:
    with Daemon("-cgroup-root", str(tmp_path)) as d:
        assert list(tmp_path.iterdir()) == []
        out = d.output()
        assert "is not a cgroup2 filesystem" in out
        assert "falling back to no-op cgroup manager" in out
        r = httpx.post(d.url + "/freeze", params={"maxWaitMs": 200})
        assert r.json()["unobservable"] == 2


# --- /freeze and the thaws ---------------------------------------------------


def test_freeze_stops_output_and_init_resumes_it(
    daemon: Daemon, http: httpx.Client, cgroupfs: CgroupFs
) -> None:
    sbx = sdk_sandbox(daemon, None)
    lines = counter(sbx)
    try:
        assert wait_until(lambda: len(lines.numbers) >= 3)
        r = http.post("/freeze", params={"maxWaitMs": 2000})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "no-store"
        body = r.json()
        assert list(body) == FREEZE_KEYS
        assert body["mode"] == "legacy"
        counts = (body["requested"], body["frozen"], body["notFrozen"], body["failed"])
        assert counts == (2, 2, 0, 0)
        assert cgroupfs.frozen("user")
        assert cgroupfs.frozen("ptys")
        assert_stopped(lines)
        # /freeze again while frozen changes nothing.
        assert http.post("/freeze", params={"maxWaitMs": 500}).json()["frozen"] == 2

        r = http.post("/init", json={})
        assert r.status_code == 204
        assert "x-envd-freeze-audit" not in r.headers  # only after a hierarchy freeze
        assert not cgroupfs.frozen("user")
        assert_resumes(lines)
    finally:
        lines.stop()


def test_freeze_without_wait_is_a_bare_204_and_unfreeze_thaws(
    daemon: Daemon, http: httpx.Client, cgroupfs: CgroupFs
) -> None:
    sbx = sdk_sandbox(daemon, None)
    lines = counter(sbx)
    try:
        assert wait_until(lambda: len(lines.numbers) >= 3)
        for params in ({}, {"maxWaitMs": "0"}, {"maxWaitMs": "-5"}):
            r = http.post("/freeze", params=params)
            assert r.status_code == 204
            assert r.content == b""
            assert "cache-control" not in r.headers
        assert wait_until(lambda: cgroupfs.frozen("user"))
        assert_stopped(lines)
        r = http.post("/unfreeze")
        assert r.status_code == 204
        assert r.headers["cache-control"] == "no-store"
        assert_resumes(lines)
    finally:
        lines.stop()


@pytest.mark.parametrize(
    ("query", "text"),
    [
        (
            "maxCgroups=abc",
            'Invalid format for parameter maxCgroups: strconv.ParseInt: parsing "abc":'
            " invalid syntax\n",
        ),
        (
            "maxWaitMs=1.5",
            'Invalid format for parameter maxWaitMs: strconv.ParseInt: parsing "1.5":'
            " invalid syntax\n",
        ),
    ],
)
def test_freeze_bad_parameters(
    http: httpx.Client, cgroupfs: CgroupFs, query: str, text: str
) -> None:
    r = http.post("/freeze?" + query)
    assert r.status_code == 400
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.text == text
    assert not cgroupfs.frozen("user")  # nothing was frozen


def test_hierarchy_freeze_guest_frozen_and_allowlist(
    http: httpx.Client, cgroupfs: CgroupFs
) -> None:
    # Cgroups the guest made itself: one it froze, one running, one allowlisted.
    for name in ("guest-paused", "guest-app", "init.scope"):
        cgroupfs.path(name).mkdir()
    cgroupfs.set_freeze(1, "guest-paused")
    r = http.post("/freeze", params={"mode": "hierarchy", "maxWaitMs": 2000})
    assert r.status_code == 200
    body = r.json()
    assert body["mode"] == "hierarchy"
    # user, ptys and guest-app; socats and init.scope are allowlisted.
    assert (body["requested"], body["frozen"], body["notFrozen"]) == (3, 3, 0)
    assert body["preFrozen"] == 1
    assert body["allowlisted"] == 2
    assert cgroupfs.frozen("guest-app")
    assert not cgroupfs.frozen("socats")
    assert not cgroupfs.frozen("init.scope")

    r = http.post("/init", json={})
    assert r.status_code == 204
    audit = json.loads(r.headers["x-envd-freeze-audit"])
    assert list(audit) == ["visited", "frozen", "escaped", "violations", "truncated"]
    assert (audit["violations"], audit["escaped"]) == (0, 0)
    assert audit["frozen"] == 4  # user, ptys, guest-app, guest-paused
    assert not cgroupfs.frozen("guest-app")
    assert not cgroupfs.frozen("user")
    # The guest's own freeze survives the thaw.
    assert cgroupfs.frozen("guest-paused")
    cgroupfs.set_freeze(0, "guest-paused")


def test_hierarchy_freeze_bound_truncates(http: httpx.Client, cgroupfs: CgroupFs) -> None:
    for i in range(6):
        cgroupfs.path(f"app-{i}").mkdir()
    params: dict[str, str | int] = {"mode": "hierarchy", "maxWaitMs": 1000, "maxCgroups": 4}
    body = http.post("/freeze", params=params).json()
    assert body["truncated"] is True
    assert body["visited"] == 4
    assert http.post("/unfreeze").status_code == 204
    assert not any(cgroupfs.frozen(f"app-{i}") for i in range(6))


def test_unfreeze_thaws_what_a_hierarchy_freeze_froze(
    http: httpx.Client, cgroupfs: CgroupFs
) -> None:
    cgroupfs.path("app").mkdir()
    cgroupfs.path("app", "worker").mkdir()
    http.post("/freeze", params={"mode": "hierarchy", "maxWaitMs": 1000})
    assert cgroupfs.frozen("app", "worker")  # through its parent
    assert http.post("/unfreeze").status_code == 204
    assert not cgroupfs.frozen("app")
    assert not cgroupfs.frozen("app", "worker")


def test_watchdog_thaws_by_itself(cgroupfs: CgroupFs) -> None:
    with Daemon(*cgroupfs.args, "-thaw-watchdog-ms", "1500") as d:
        r = httpx.post(d.url + "/freeze", params={"maxWaitMs": 1000})
        assert r.json()["frozen"] == 2
        time.sleep(0.5)
        assert cgroupfs.frozen("user")
        assert wait_until(lambda: not cgroupfs.frozen("user"), timeout=10)
        assert "thaw watchdog fired" in d.output()
        # A thaw disarms it: after /unfreeze nothing fires again.
        httpx.post(d.url + "/freeze")
        httpx.post(d.url + "/unfreeze")
        time.sleep(2.5)
        assert d.output().count("thaw watchdog fired") == 1


# --- killing the whole tree ---------------------------------------------------

# Leaves its process group three ways: `setsid`, a double-fork daemon, `nohup &`.
ESCAPERS = (
    "setsid sleep 1000 & "
    "python3 -c 'import os,time\n"
    "if os.fork(): os._exit(0)\n"
    "os.setsid()\n"
    "if os.fork(): os._exit(0)\n"
    "[os.close(fd) for fd in (0, 1, 2)]\n"
    "time.sleep(1000)' & "
    "nohup sleep 1000 >/dev/null 2>&1 & "
    "sleep 1000"
)


def _escapers(sbx: Sandbox, fs: CgroupFs, **kwargs: Any) -> tuple[Any, list[int]]:
    handle = sbx.commands.run(ESCAPERS, background=True, user="user", **kwargs)
    assert wait_until(lambda: len(pids_of(fs, "user")) >= 5)
    time.sleep(0.3)  # the daemon's second fork
    pids = pids_of(fs, "user")
    sessions = {os.getsid(p) for p in pids if alive(p)}
    assert len(sessions) >= 3, "the escapers did not leave the command's session"
    return handle, pids


def test_sigkill_reaches_every_descendant(daemon: Daemon, cgroupfs: CgroupFs) -> None:
    sbx = sdk_sandbox(daemon, None)
    handle, pids = _escapers(sbx, cgroupfs)
    assert handle.kill()
    assert wait_until(lambda: not any(alive(p) for p in pids))
    assert wait_until(lambda: not dirs(cgroupfs, "user"))


def test_timeout_kill_reaches_every_descendant(daemon: Daemon, cgroupfs: CgroupFs) -> None:
    sbx = sdk_sandbox(daemon, None)
    handle, pids = _escapers(sbx, cgroupfs, timeout=3)
    with pytest.raises(Exception):  # noqa: B017, PT011  # the SDK's error for a killed command
        handle.wait()
    assert wait_until(lambda: not any(alive(p) for p in pids))


def test_without_cgroups_escapers_survive_as_upstream() -> None:
    shared = Path(tempfile.mkdtemp(prefix="envd-escaper-"))
    shared.chmod(0o777)  # the command runs as `user`
    marker = shared / "pid"
    with Daemon("-no-cgroups") as d:
        sbx = sdk_sandbox(d, None)
        handle = sbx.commands.run(
            f"setsid sh -c 'echo $$ > {marker}; exec sleep 1000' & sleep 1000",
            background=True,
            user="user",
        )
        assert wait_until(lambda: marker.exists() and marker.read_text().strip())
        pid = int(marker.read_text())
        try:
            handle.kill()
            time.sleep(0.5)
            assert alive(pid)  # it left the process group: out of reach, as upstream
        finally:
            os.kill(pid, 9)
            shutil.rmtree(shared)
