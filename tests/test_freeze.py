"""cgroups, `/freeze`, `/unfreeze` and the thaw in `/init`, against real daemons and real cgroups.

Every daemon here manages a private cgroup v2 tree (tests/cgroupfs.py);
freezing is proved by behaviour: a counter stops printing while frozen and
carries on, without a gap, after the thaw.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from e2b import AsyncSandbox
from e2b.connection_config import ConnectionConfig
from packaging.version import Version

from envd import ENVD_VERSION
from tests.cgroupfs import CgroupFs
from tests.connect_raw import stream_json
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


def async_sandbox(daemon: Daemon) -> AsyncSandbox:
    config = ConnectionConfig(debug=True, sandbox_url=daemon.url)
    return AsyncSandbox(
        sandbox_id="debug",
        sandbox_domain=None,
        envd_version=Version(ENVD_VERSION),
        envd_access_token=None,
        traffic_access_token=None,
        connection_config=config,
    )


@pytest.fixture
def daemon(cgroupfs: CgroupFs) -> Iterator[Daemon]:
    with Daemon(*cgroupfs.args, "-thaw-watchdog-ms", "120000") as d:
        yield d


@pytest.fixture
async def http(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as client:
        yield client


class Lines:
    """Numbered lines from a counter, as they arrive."""

    def __init__(self) -> None:
        self.text = ""

    def __call__(self, chunk: str | bytes) -> None:
        self.text += chunk.decode() if isinstance(chunk, bytes) else chunk

    @property
    def numbers(self) -> list[int]:
        return [int(x) for x in self.text.replace("\r", "").split("\n")[:-1] if x.strip().isdigit()]


async def wait_for(predicate: Callable[[], object], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def assert_stopped(lines: Lines, seconds: float = 1.0) -> None:
    # A line already in flight may still arrive right after the freeze.
    await asyncio.sleep(0.3)
    before = len(lines.numbers)
    await asyncio.sleep(seconds)
    assert len(lines.numbers) == before, "output went on while frozen"


def assert_contiguous(numbers: list[int]) -> None:
    assert numbers == list(range(1, len(numbers) + 1)), numbers


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


# --- the manager -----------------------------------------------------------


async def test_cgroups_created_and_commands_placed(daemon: Daemon, cgroupfs: CgroupFs) -> None:
    for name in ("user", "ptys", "socats"):
        assert cgroupfs.path(name).is_dir()
    # This machine's v2 tree has no memory/cpu/io controllers: skipped, not fatal.
    assert 'cgroup property "memory.max" unavailable' in daemon.output()
    sbx = async_sandbox(daemon)
    cmd = await sbx.commands.run("sh -c 'sleep 600' & sleep 600", background=True)
    pty = await sbx.pty.create(size=_pty_size(), on_data=lambda _d: None)
    try:
        assert await wait_for(lambda: len(pids_of(cgroupfs, "user")) == 3)
        user_cgroups = _dirs(cgroupfs, "user")
        assert len(user_cgroups) == 1
        # The command and all it started, in the command's own cgroup.
        assert cmd.pid in cgroupfs.procs("user", user_cgroups[0].name)
        assert len(cgroupfs.procs("user", user_cgroups[0].name)) == 3
        assert any(pty.pid in cgroupfs.procs("ptys", p.name) for p in _dirs(cgroupfs, "ptys"))
    finally:
        await cmd.kill()
        await pty.kill()
    # Each command's cgroup goes with it.
    assert await wait_for(lambda: not _dirs(cgroupfs, "user") and not _dirs(cgroupfs, "ptys"))


def _own_cgroup(daemon: Daemon, tag: str | None) -> str:
    start: dict[str, object] = {
        "process": {"cmd": "/bin/cat", "args": ["/proc/self/cgroup"]},
        **({"tag": tag} if tag else {}),
    }
    events, _ = stream_json(daemon.url, "Start", start)
    out = b"".join(
        base64.b64decode(e["event"]["data"]["stdout"])
        for e in events
        if "data" in e.get("event", {}) and "stdout" in e["event"]["data"]
    )
    return next(line for line in out.decode().splitlines() if line.startswith("0::"))[3:]


def test_system_tag_stays_in_envds_cgroup(daemon: Daemon, cgroupfs: CgroupFs) -> None:
    root = "/" + cgroupfs.root.name
    assert _own_cgroup(daemon, None).startswith(f"{root}/user/cmd-")
    assert _own_cgroup(daemon, "mine").startswith(f"{root}/user/cmd-")
    assert _own_cgroup(daemon, "_system") == cgroup_of(daemon.pid)


def _dirs(fs: CgroupFs, name: str) -> list[Path]:
    return [p for p in fs.path(name).iterdir() if p.is_dir()]


def _pty_size() -> object:
    from e2b.sandbox.commands.command_handle import PtySize  # noqa: PLC0415

    return PtySize(rows=24, cols=80)


def test_no_cgroups_touches_nothing(cgroupfs: CgroupFs) -> None:
    with Daemon("-no-cgroups", *cgroupfs.args) as d:
        assert list(cgroupfs.root.iterdir()) == [
            p for p in cgroupfs.root.iterdir() if not p.is_dir()
        ]
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


async def test_freeze_stops_output_and_init_resumes_it(
    daemon: Daemon,
    http: httpx.AsyncClient,
    cgroupfs: CgroupFs,
) -> None:
    sbx = async_sandbox(daemon)
    lines = Lines()
    handle = await sbx.commands.run(COUNTER, background=True, on_stdout=lines)
    try:
        assert await wait_for(lambda: len(lines.numbers) >= 3)
        r = await http.post("/freeze", params={"maxWaitMs": 2000})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "no-store"
        body = r.json()
        assert list(body) == FREEZE_KEYS
        assert body["mode"] == "legacy"
        assert (body["requested"], body["frozen"], body["notFrozen"], body["failed"]) == (
            2,
            2,
            0,
            0,
        )
        assert cgroupfs.frozen("user")
        assert cgroupfs.frozen("ptys")
        await assert_stopped(lines)
        # /freeze again while frozen changes nothing.
        assert (await http.post("/freeze", params={"maxWaitMs": 500})).json()["frozen"] == 2

        r = await http.post("/init", json={})
        assert r.status_code == 204
        assert "x-envd-freeze-audit" not in r.headers  # only after a hierarchy freeze
        assert not cgroupfs.frozen("user")
        count = len(lines.numbers)
        assert await wait_for(lambda: len(lines.numbers) >= count + 5)
        assert_contiguous(lines.numbers)
    finally:
        await handle.kill()


async def test_freeze_without_wait_is_a_bare_204_and_unfreeze_thaws(
    daemon: Daemon,
    http: httpx.AsyncClient,
    cgroupfs: CgroupFs,
) -> None:
    sbx = async_sandbox(daemon)
    lines = Lines()
    handle = await sbx.commands.run(COUNTER, background=True, on_stdout=lines)
    try:
        assert await wait_for(lambda: len(lines.numbers) >= 3)
        for params in ({}, {"maxWaitMs": "0"}, {"maxWaitMs": "-5"}):
            r = await http.post("/freeze", params=params)
            assert r.status_code == 204
            assert r.content == b""
            assert "cache-control" not in r.headers
        assert await wait_for(lambda: cgroupfs.frozen("user"))
        await assert_stopped(lines)
        r = await http.post("/unfreeze")
        assert r.status_code == 204
        assert r.headers["cache-control"] == "no-store"
        count = len(lines.numbers)
        assert await wait_for(lambda: len(lines.numbers) >= count + 5)
        assert_contiguous(lines.numbers)
    finally:
        await handle.kill()


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
async def test_freeze_bad_parameters(
    http: httpx.AsyncClient,
    cgroupfs: CgroupFs,
    query: str,
    text: str,
) -> None:
    r = await http.post("/freeze?" + query)
    assert r.status_code == 400
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.text == text
    assert not cgroupfs.frozen("user")  # nothing was frozen


async def test_hierarchy_freeze_guest_frozen_and_allowlist(
    daemon: Daemon,
    http: httpx.AsyncClient,
    cgroupfs: CgroupFs,
) -> None:
    # Cgroups the guest made itself: one it froze, one running, one allowlisted.
    for name in ("guest-paused", "guest-app", "init.scope"):
        cgroupfs.path(name).mkdir()
    cgroupfs.set_freeze(1, "guest-paused")
    r = await http.post("/freeze", params={"mode": "hierarchy", "maxWaitMs": 2000})
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

    r = await http.post("/init", json={})
    assert r.status_code == 204
    audit = json.loads(r.headers["x-envd-freeze-audit"])
    assert list(audit) == ["visited", "frozen", "escaped", "violations", "truncated"]
    assert audit["violations"] == 0
    assert audit["escaped"] == 0
    assert audit["frozen"] >= 4  # user, ptys, guest-app, guest-paused
    assert not cgroupfs.frozen("guest-app")
    assert not cgroupfs.frozen("user")
    # The guest's own freeze survives the thaw.
    assert cgroupfs.frozen("guest-paused")
    cgroupfs.set_freeze(0, "guest-paused")


async def test_hierarchy_freeze_bound_truncates(
    http: httpx.AsyncClient,
    cgroupfs: CgroupFs,
) -> None:
    for i in range(6):
        cgroupfs.path(f"app-{i}").mkdir()
    r = await http.post("/freeze", params={"mode": "hierarchy", "maxWaitMs": 1000, "maxCgroups": 4})
    body = r.json()
    assert body["truncated"] is True
    assert body["visited"] == 4
    assert (await http.post("/unfreeze")).status_code == 204
    assert not any(cgroupfs.frozen(f"app-{i}") for i in range(6))


async def test_unfreeze_thaws_what_a_hierarchy_freeze_froze(
    http: httpx.AsyncClient,
    cgroupfs: CgroupFs,
) -> None:
    cgroupfs.path("app").mkdir()
    cgroupfs.path("app", "worker").mkdir()
    await http.post("/freeze", params={"mode": "hierarchy", "maxWaitMs": 1000})
    assert cgroupfs.frozen("app", "worker")  # through its parent
    assert (await http.post("/unfreeze")).status_code == 204
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
        # A thaw disarms it: after /unfreeze a new freeze waits its full window again.
        httpx.post(d.url + "/freeze")
        httpx.post(d.url + "/unfreeze")
        time.sleep(2.5)
        assert d.output().count("thaw watchdog fired") == 1


# --- killing the whole tree ---------------------------------------------------

# Leaves its process group twice over: `setsid` and a double-fork daemon.
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


async def _escapers(sbx: AsyncSandbox, fs: CgroupFs, **kwargs: object) -> tuple[object, list[int]]:
    handle = await sbx.commands.run(ESCAPERS, background=True, **kwargs)  # type: ignore[call-overload]
    assert await wait_for(lambda: len(pids_of(fs, "user")) >= 5)
    await asyncio.sleep(0.3)  # the daemon's second fork
    pids = pids_of(fs, "user")
    sessions = {os.getsid(p) for p in pids if alive(p)}
    assert len(sessions) >= 3, "the escapers did not leave the command's session"
    return handle, pids


async def test_sigkill_reaches_every_descendant(daemon: Daemon, cgroupfs: CgroupFs) -> None:
    sbx = async_sandbox(daemon)
    handle, pids = await _escapers(sbx, cgroupfs)
    assert await handle.kill()  # type: ignore[attr-defined]
    assert await wait_for(lambda: not any(alive(p) for p in pids))
    assert await wait_for(lambda: not _dirs(cgroupfs, "user"))


async def test_timeout_kill_reaches_every_descendant(daemon: Daemon, cgroupfs: CgroupFs) -> None:
    sbx = async_sandbox(daemon)
    handle, pids = await _escapers(sbx, cgroupfs, timeout=3)
    result = None
    try:
        await handle.wait()  # type: ignore[attr-defined]
    except Exception as e:  # the SDK raises for the killed command
        result = e
    assert result is not None
    assert await wait_for(lambda: not any(alive(p) for p in pids))


async def test_without_cgroups_escapers_survive_as_upstream(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    with Daemon("-no-cgroups") as d:
        sbx = async_sandbox(d)
        handle = await sbx.commands.run(
            f"setsid sh -c 'echo $$ > {marker}; exec sleep 1000' & sleep 1000", background=True
        )
        assert await wait_for(lambda: marker.exists() and marker.read_text().strip())
        pid = int(marker.read_text())
        try:
            await handle.kill()
            await asyncio.sleep(0.5)
            assert alive(pid)  # left the process group: out of reach, as upstream
        finally:
            os.kill(pid, 9)
