"""`/fsfreeze`, `/fsthaw`, `/collapse`, and the orchestrator's whole pause/resume sequence.

The file system frozen here is always a loop-mounted ext4 (tests/loopfs.py)
given as `-fsfreeze-mount`, never the machine's `/`.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.cgroupfs import CgroupFs
from tests.control import sdk_sandbox
from tests.daemon import Daemon, wait_until
from tests.loopfs import LoopFs
from tests.test_freeze import Lines, assert_resumes, assert_stopped, counter, pty_counter

COLLAPSE_KEYS = ["alreadyHuge", "chunks", "collapsed", "elapsedMs", "regions", "skipped"]


@pytest.fixture
def daemon(cgroupfs: CgroupFs, loopfs: LoopFs) -> Iterator[Daemon]:
    with Daemon(*cgroupfs.args, *loopfs.args) as d:
        yield d


def _writer(path: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", f"echo written > {path}"])


def test_fsfreeze_blocks_writes_until_fsthaw(daemon: Daemon, loopfs: LoopFs) -> None:
    (loopfs.mount / "before").write_text("kept")
    r = httpx.post(daemon.url + "/fsfreeze")
    assert r.status_code == 204
    assert r.headers["cache-control"] == "no-store"
    assert r.content == b""
    # Idempotent: a second freeze (EBUSY) is a success too.
    assert httpx.post(daemon.url + "/fsfreeze").status_code == 204
    writer = _writer(str(loopfs.mount / "after"))
    try:
        time.sleep(1.0)
        assert writer.poll() is None, "a write went through a frozen file system"
        assert (loopfs.mount / "before").read_text() == "kept"  # reads still work
        r = httpx.post(daemon.url + "/fsthaw")
        assert r.status_code == 204
        assert r.headers["cache-control"] == "no-store"
        assert writer.wait(10) == 0
        assert (loopfs.mount / "after").read_text() == "written\n"
    finally:
        loopfs.thaw()
        writer.wait(10)
    # Thawing a thawed file system (EINVAL) is a success as well.
    assert httpx.post(daemon.url + "/fsthaw").status_code == 204


def test_fsfreeze_errors_are_json() -> None:
    # The harness's default mount point does not exist.
    with Daemon() as d:
        for route, verb in (("/fsfreeze", "open"), ("/fsthaw", "open")):
            r = httpx.post(d.url + route)
            assert r.status_code == 500
            assert r.headers["content-type"] == "application/json; charset=utf-8"
            assert "cache-control" not in r.headers
            assert r.json() == {
                "code": 500,
                "message": f"{verb} /nonexistent/envd-test-fsfreeze: no such file or directory",
            }


def test_fsfreeze_of_a_file_system_without_freeze_support() -> None:
    # /proc cannot be frozen: the ioctl's own error comes back.
    with Daemon("-fsfreeze-mount", "/proc") as d:
        r = httpx.post(d.url + "/fsfreeze")
        assert r.status_code == 500
        assert r.json()["message"].startswith("FIFREEZE /proc: ")


def _anon_huge_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0


def test_collapse_counts_are_the_kernels() -> None:
    with Daemon() as d:
        before = _anon_huge_kib(d.pid)
        r = httpx.post(d.url + "/collapse", timeout=60)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "no-store"
        body = r.json()
        assert list(body) == COLLAPSE_KEYS
        assert body["chunks"] == body["collapsed"] + body["alreadyHuge"] + body["skipped"]
        assert body["regions"] > 0
        after = _anon_huge_kib(d.pid)
        if body["collapsed"]:
            # What it says it collapsed is now backed by huge pages.
            assert after - before >= 2048
        # Done once, a second pass finds the same windows already huge.
        again = httpx.post(d.url + "/collapse", timeout=60).json()
        assert again["collapsed"] <= max(body["collapsed"], 1)
        if body["collapsed"]:
            assert again["alreadyHuge"] >= 1


def test_freeze_cancelled_while_waiting_lets_go_of_the_lock(
    daemon: Daemon, cgroupfs: CgroupFs, loopfs: LoopFs
) -> None:
    """A cgroup stuck in an uninterruptible write cannot settle frozen; a client that gives
    up on its `maxWaitMs` must not keep the lock for the rest of that wait."""
    sbx = sdk_sandbox(daemon, None)
    assert httpx.post(daemon.url + "/fsfreeze").status_code == 204
    stuck = sbx.commands.run(
        f"echo x > {loopfs.mount}/stuck", background=True, user="user", timeout=0
    )
    try:
        time.sleep(0.5)  # now in D state, inside user/cmd-N
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(daemon.url + "/freeze", params={"maxWaitMs": 60_000}, timeout=1.0)
        # The next freeze gets the lock at once and reports the stuck cgroup.
        r = httpx.post(daemon.url + "/freeze", params={"maxWaitMs": 300}, timeout=10)
        assert time.monotonic() - started < 8
        assert r.status_code == 200
        body = r.json()
        assert body["notFrozen"] == 1
        assert body["frozen"] == 1  # ptys
    finally:
        assert httpx.post(daemon.url + "/fsthaw").status_code == 204
        assert httpx.post(daemon.url + "/unfreeze").status_code == 204
        stuck.wait()


def test_orchestrator_pause_and_resume(daemon: Daemon, cgroupfs: CgroupFs, loopfs: LoopFs) -> None:
    """freeze(maxWaitMs) → collapse → fsfreeze → [snapshot] → fsthaw → /init, with an SDK
    command and a PTY running throughout: both stop, then carry on without losing a line."""
    sbx = sdk_sandbox(daemon, None)
    command = counter(sbx)
    pty = pty_counter(sbx)
    runs: list[Lines] = [command, pty]
    try:
        assert wait_until(lambda: all(len(x.numbers) >= 5 for x in runs))
        url = daemon.url
        r = httpx.post(url + "/freeze", params={"maxWaitMs": 2000})
        assert r.status_code == 200
        body = r.json()
        assert (body["frozen"], body["notFrozen"], body["failed"]) == (2, 0, 0)
        collapse = httpx.post(url + "/collapse", timeout=60)
        assert collapse.status_code == 200
        assert httpx.post(url + "/fsfreeze").status_code == 204
        for run in runs:
            assert_stopped(run)
        # A file write through envd's own files API would block now; a snapshot is taken here.
        assert httpx.post(url + "/fsthaw").status_code == 204
        for run in runs:
            assert_stopped(run, 0.3)  # still frozen: only /init thaws the workload
        r = httpx.post(url + "/init", json={"timestamp": _now()})
        assert r.status_code == 204
        for run in runs:
            assert_resumes(run)
        # The same SDK session can still start commands.
        assert sbx.commands.run("echo again", user="user").stdout == "again\n"
    finally:
        for run in runs:
            run.stop()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def test_init_thaws_even_when_its_settings_fail(cgroupfs: CgroupFs) -> None:
    with Daemon(*cgroupfs.args, "-ca-bundle", "/nonexistent/envd-test-ca.crt") as d:
        httpx.post(d.url + "/freeze", params={"maxWaitMs": 1000})
        assert cgroupfs.frozen("user")
        r = httpx.post(d.url + "/init", json={"caBundle": "-----BEGIN CERTIFICATE-----\n"})
        assert r.status_code == 400
        assert r.text.startswith("failed to install CA bundle: ")
        assert not cgroupfs.frozen("user")


def test_init_with_a_bad_token_does_not_thaw(cgroupfs: CgroupFs) -> None:
    with Daemon(*cgroupfs.args) as d:
        assert httpx.post(d.url + "/init", json={"accessToken": "secret"}).status_code == 204
        headers = {"X-Access-Token": "secret"}
        httpx.post(d.url + "/freeze", params={"maxWaitMs": 1000}, headers=headers)
        assert cgroupfs.frozen("user")
        r = httpx.post(d.url + "/init", json={"accessToken": "wrong"})
        assert r.status_code == 401
        assert cgroupfs.frozen("user")
        # Without the token the pause routes are refused like every other.
        assert httpx.post(d.url + "/unfreeze").status_code == 401
        assert httpx.post(d.url + "/unfreeze", headers=headers).status_code == 204
        assert not cgroupfs.frozen("user")


def test_concurrent_freezes_and_thaws_serialise(daemon: Daemon, cgroupfs: CgroupFs) -> None:
    errors: list[BaseException] = []

    def hammer(route: str, params: dict[str, int]) -> None:
        try:
            for _ in range(10):
                r = httpx.post(daemon.url + route, params=params, timeout=30)
                assert r.status_code in (200, 204)
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=hammer, args=("/freeze", {"maxWaitMs": 500})),
        threading.Thread(target=hammer, args=("/unfreeze", {})),
        threading.Thread(target=hammer, args=("/freeze", {})),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert httpx.post(daemon.url + "/init", json={}).status_code == 204
    assert not cgroupfs.frozen("user")
    assert not cgroupfs.frozen("ptys")


def test_commands_started_while_frozen_run_after_the_thaw(
    daemon: Daemon, cgroupfs: CgroupFs
) -> None:
    """A child joins the frozen `user` before its exec, so its spawn waits for the thaw;
    eight of them (more than the shared worker threads) must not keep the thaw from running."""
    assert httpx.post(daemon.url + "/freeze", params={"maxWaitMs": 1000}).json()["frozen"] == 2
    sbx = sdk_sandbox(daemon, None)
    results: list[str] = []

    def run() -> None:
        results.append(sbx.commands.run("echo ran", user="user", timeout=60).stdout)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert results == []  # frozen: nothing ran yet
    started = time.monotonic()
    assert httpx.post(daemon.url + "/init", json={}, timeout=30).status_code == 204
    assert time.monotonic() - started < 10
    for t in threads:
        t.join(60)
    assert results == ["ran\n"] * 8
