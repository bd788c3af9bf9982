"""`launch.start` on its own: the child it describes, and the `cgroup` it joins before exec.

These call the launch path directly (no daemon), because the cgroup a child
joins is chosen by the caller; the RPC-level behaviour is in test_process_rpc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from connectrpc.errors import ConnectError

from envd.execcontext import ExecContext
from envd.gen.process import process_pb2 as pb
from envd.permissions.users import lookup_user
from envd.services.process import forkserver, launch, spawners


@pytest.fixture
def cgroup_root() -> Iterator[Path]:
    """A cgroup v2 hierarchy mounted in a temporary directory (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting cgroup2 needs root")
    mnt = Path(tempfile.mkdtemp(prefix="envd-cg-"))
    if subprocess.run(["mount", "-t", "cgroup2", "none", str(mnt)], check=False).returncode != 0:
        mnt.rmdir()
        pytest.skip("cannot mount cgroup2 here")
    try:
        yield mnt
    finally:
        for leaf in mnt.glob("envd-test-*"):
            # rmdir fails while a killed child has not left the cgroup yet.
            for _ in range(50):
                with contextlib.suppress(OSError):
                    leaf.rmdir()
                    break
                time.sleep(0.1)
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


@pytest.fixture(params=["popen", "forkserver"])
def spawner(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per spawn path: Popen in-process, and a fork server of our own."""
    if request.param == "forkserver":
        assert forkserver.start() is not None
    try:
        yield request.param
    finally:
        spawners.stop_fork_server()


def read_text(path: str | Path) -> str:
    return Path(path).read_text()


def request(script: str, *, pty: bool = False, cwd: str | None = None) -> pb.StartRequest:
    config = pb.ProcessConfig(cmd="/bin/sh", args=["-c", script])
    if cwd is not None:
        config.cwd = cwd
    req = pb.StartRequest(process=config, stdin=False)
    if pty:
        req.pty.size.cols, req.pty.size.rows = 80, 24
    return req


async def output_and_status(child: launch.Child) -> tuple[bytes, int]:
    """Everything the child writes (blocking reads in a thread), then its wait status."""

    def collect() -> tuple[bytes, int]:
        data = bytearray()
        for fd in child.outputs:
            os.set_blocking(fd, True)
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: terminal hung up
                    break
                if not chunk:
                    break
                data += chunk
        _, status = os.waitpid(child.pid, 0)
        return bytes(data), status

    try:
        return await asyncio.to_thread(collect)
    finally:
        for fd in [*child.outputs, child.stdin, child.pidfd]:
            if fd is not None and fd >= 0:
                os.close(fd)


@pytest.mark.parametrize("pty", [False, True], ids=["pipes", "pty"])
async def test_child_joins_the_cgroup_before_it_runs(
    cgroup_root: Path, pty: bool, spawner: str
) -> None:
    plan = launch.plan_for(request("true"), lookup_user("user"), ExecContext(), None)
    assert spawners.choose_spawner(plan).name == spawner
    leaf = cgroup_root / f"envd-test-{uuid.uuid4().hex[:8]}"
    leaf.mkdir()
    loop = asyncio.get_running_loop()
    user = lookup_user("user")
    child = await launch.start(
        loop,
        request("cat /proc/self/cgroup; id -u", pty=pty),
        user,
        ExecContext(),
        cgroup=str(leaf),
    )
    assert child.pidfd >= 0
    assert (child.master is not None) == pty
    out, status = await output_and_status(child)
    assert os.waitstatus_to_exitcode(status) == 0
    lines = out.decode().split()
    # The command itself already ran inside, and as the user.
    assert [line for line in lines if line.startswith("0::")] == [f"0::/{leaf.name}"]
    assert lines[-1] == user.uid


async def test_long_running_child_is_listed_in_the_cgroup(cgroup_root: Path, spawner: str) -> None:
    leaf = cgroup_root / f"envd-test-{uuid.uuid4().hex[:8]}"
    leaf.mkdir()
    loop = asyncio.get_running_loop()
    child = await launch.start(
        loop, request("sleep 30"), lookup_user("user"), ExecContext(), cgroup=str(leaf)
    )
    try:
        assert str(child.pid) in read_text(leaf / "cgroup.procs").split()
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        await output_and_status(child)


async def test_missing_cgroup_is_a_spawn_error(cgroup_root: Path, spawner: str) -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(ConnectError) as info:
        await launch.start(
            loop,
            request("true"),
            lookup_user("user"),
            ExecContext(),
            cgroup=str(cgroup_root / "envd-test-missing"),
        )
    assert info.value.message == (
        "error starting process '/bin/sh -c true': fork/exec /bin/sh: no such file or directory"
    )


async def test_without_cgroup_the_child_stays_in_ours(spawner: str) -> None:
    loop = asyncio.get_running_loop()
    child = await launch.start(
        loop, request("cat /proc/self/cgroup"), lookup_user("user"), ExecContext()
    )
    out, _ = await output_and_status(child)
    ours = read_text("/proc/self/cgroup")
    assert [line for line in out.decode().splitlines() if line.startswith("0::")] == [
        line for line in ours.splitlines() if line.startswith("0::")
    ]
