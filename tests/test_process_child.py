"""The child as upstream's wrapper leaves it, read from /proc/<pid> and ioprio_get.

Upstream's child is `/bin/sh -c 'echo 100 > /proc/$$/oom_score_adj && exec
ionice -c 2 -n 4 nice -n <0 − envd's nice> "$@"'`, started by Go's fork/exec
with the user's ids, in the cwd entered as that user. Whatever way we spawn,
the program that finally runs must look exactly like that — for pipes and for
a PTY. Each test starts `/bin/sleep` as `user`, reads its attributes while it
runs, and kills it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from envd.permissions.users import lookup_user, supplementary_groups
from tests.connect_raw import envelope, parse_envelopes
from tests.daemon import Daemon
from tests.procfs import children

PROCESS = "/process.Process/"
USER = "user"
IOPRIO_GET = {"x86_64": 252, "aarch64": 31}
IOPRIO_WHO_PROCESS = 1


def ioprio(pid: int) -> tuple[int, int]:
    """(class, level) as ioprio_get(2) reports them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    nr = IOPRIO_GET[os.uname().machine]
    value = libc.syscall(ctypes.c_long(nr), ctypes.c_int(IOPRIO_WHO_PROCESS), ctypes.c_int(pid))
    assert value >= 0, os.strerror(ctypes.get_errno())
    return value >> 13, value & 0xFF


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name; index 0 is field 3 (state)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def environ(pid: int) -> dict[str, str]:
    # Right after exec the kernel may not have set up the new image's
    # environment area yet (the start event can arrive that early).
    deadline = time.monotonic() + 5
    while not (raw := Path(f"/proc/{pid}/environ").read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return dict(e.decode().partition("=")[::2] for e in raw.split(b"\0") if e)


def start(url: str, body: dict[str, object], user: str = USER) -> int:
    """Start a process on a stream we abandon after the start event; its pid once it runs.

    With upstream's wrapper the pid is first `sh`, then `ionice`, `nice`, and
    at last the command: attributes are read once the command has replaced them.
    """
    pid = _start(url, body, user)
    program = os.path.realpath(body["process"]["cmd"])  # type: ignore[index]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/exe") == program:
                break
        time.sleep(0.01)
    return pid


def _start(url: str, body: dict[str, object], user: str) -> int:
    auth = "Basic " + base64.b64encode(f"{user}:".encode()).decode()
    with httpx.stream(
        "POST",
        url + PROCESS + "Start",
        content=envelope(json.dumps(body).encode()),
        headers={"content-type": "application/connect+json", "authorization": auth},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        data = b""
        for chunk in r.iter_raw():
            data += chunk
            if len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[1:5], "big"):
                break
    frames = parse_envelopes(data[: 5 + int.from_bytes(data[1:5], "big")])
    event = json.loads(frames[0][1])
    assert "start" in event["event"], event
    return int(event["event"]["start"]["pid"])


def sleep_body(pty: bool, **process: object) -> dict[str, object]:
    body: dict[str, object] = {
        "process": {"cmd": "/bin/sleep", "args": ["30"], **process},
        "stdin": False,
    }
    if pty:
        body["pty"] = {"size": {"cols": 80, "rows": 24}}
    return body


@pytest.fixture
def kill_after() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("pty", [False, True], ids=["pipes", "pty"])
def test_child_attributes(envd: Daemon, kill_after: list[int], pty: bool) -> None:
    pid = start(envd.url, sleep_body(pty, envs={"FOO": "bar"}))
    kill_after.append(pid)
    account = lookup_user(USER)
    uid, gid = int(account.uid), int(account.gid)

    st = status(pid)
    assert st["Uid"].split() == [str(uid)] * 4
    assert st["Gid"].split() == [str(gid)] * 4
    assert sorted(map(int, st["Groups"].split())) == sorted(set(supplementary_groups(account, gid)))
    # Nothing ignored or blocked: Python's SIGPIPE/SIGXFSZ ignores must not leak.
    assert int(st["SigIgn"], 16) == 0
    assert int(st["SigBlk"], 16) == 0
    assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "100"
    assert ioprio(pid) == (2, 4)  # best-effort, level 4
    assert os.sched_getscheduler(pid) == os.sched_getscheduler(envd.pid)

    fields = stat_fields(pid)
    ppid, pgrp, session, tty_nr, tpgid = (int(f) for f in fields[1:6])
    nice = int(fields[16])
    assert nice == 0
    # The daemon's own child, as with upstream's fork/exec (reaped by the daemon).
    assert ppid == envd.pid
    if pty:
        assert session == pid  # leads a new session ...
        assert pgrp == pid
        assert tty_nr != 0  # ... with the terminal as controlling tty
        assert tpgid == pid
    else:
        assert pgrp == pid  # its own process group (docs/compatibility.md)
        assert session == os.getsid(envd.pid)
        assert tty_nr == 0 or tty_nr == int(stat_fields(envd.pid)[4])

    assert os.readlink(f"/proc/{pid}/cwd") == account.home
    env = environ(pid)
    assert env["FOO"] == "bar"
    assert env["HOME"] == account.home
    assert env["USER"] == env["LOGNAME"] == USER
    assert env["PWD"] == account.home  # the wrapper shell exports it
    assert set(env) == {"PATH", "HOME", "USER", "LOGNAME", "E2B_SANDBOX", "FOO", "PWD"}
    # Only stdio: no fd of the daemon or of whatever started the child leaks.
    assert sorted(os.listdir(f"/proc/{pid}/fd"), key=int) == ["0", "1", "2"]
    ours = Path(f"/proc/{envd.pid}/cgroup").read_text()
    assert Path(f"/proc/{pid}/cgroup").read_text() == ours


@pytest.mark.parametrize("pty", [False, True], ids=["pipes", "pty"])
def test_cwd_and_pwd(envd: Daemon, kill_after: list[int], pty: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        real = Path(tmp, "real")
        real.mkdir()
        link = Path(tmp, "link")
        link.symlink_to(real)
        os.chmod(tmp, 0o755)
        # PWD given and naming the cwd: kept, even through a symlink (as dash does).
        pid = start(envd.url, sleep_body(pty, cwd=str(link), envs={"PWD": str(link)}))
        kill_after.append(pid)
        assert os.readlink(f"/proc/{pid}/cwd") == str(real)
        assert environ(pid)["PWD"] == str(link)
        # No PWD given: the physical path.
        pid = start(envd.url, sleep_body(pty, cwd=str(link)))
        kill_after.append(pid)
        assert environ(pid)["PWD"] == str(real)
        # A PWD naming another directory is replaced.
        pid = start(envd.url, sleep_body(pty, cwd=str(link), envs={"PWD": "/tmp"}))
        kill_after.append(pid)
        assert environ(pid)["PWD"] == str(real)


@pytest.mark.parametrize("pty", [False, True], ids=["pipes", "pty"])
def test_nice_follows_envd(kill_after: list[int], pty: bool) -> None:
    """envd at nice −5 (as the unit's −20): children come out at 0, as `nice -n 5` leaves them."""
    with Daemon() as daemon:
        # Reniced after start: what the child inherits must follow envd, not start-up state.
        os.setpriority(os.PRIO_PROCESS, daemon.pid, -5)
        pid = start(daemon.url, sleep_body(pty))
        kill_after.append(pid)
        assert int(stat_fields(pid)[16]) == 0
        # Root may be put back up to 0 from a positive nice as well.
        os.setpriority(os.PRIO_PROCESS, daemon.pid, 5)
        pid = start(daemon.url, sleep_body(pty), user="root")
        kill_after.append(pid)
        assert int(stat_fields(pid)[16]) == 0
        # As the user, `nice -n -5` is refused: a warning, and the command still runs at 5.
        events = run_as_user(daemon.url, ["-c", "cat /proc/self/stat"])
        out = decoded(events, "stdout").rsplit(")", 1)[1].split()
        assert int(out[16]) == 5
        assert decoded(events, "stderr").endswith(": cannot set niceness: Permission denied\n")


def run_as_user(
    url: str, args: list[str], cmd: str = "/bin/sh", envs: dict[str, str] | None = None
) -> list[dict[str, object]]:
    auth = "Basic " + base64.b64encode(f"{USER}:".encode()).decode()
    process = {"cmd": cmd, "args": args, "envs": envs or {}}
    r = httpx.post(
        url + PROCESS + "Start",
        content=envelope(json.dumps({"process": process, "stdin": False}).encode()),
        headers={"content-type": "application/connect+json", "authorization": auth},
        timeout=30,
    )
    frames = parse_envelopes(r.content)
    return [json.loads(payload) for flags, payload in frames if flags == 0]


def decoded(events: list[dict[str, Any]], member: str) -> str:
    out = b""
    for e in events:
        data = e["event"].get("data", {})
        if member in data:
            out += base64.b64decode(data[member])
    return out.decode()


def test_missing_command_is_the_wrappers_message(envd: Daemon) -> None:
    """What upstream's `nice` prints when it cannot exec the command (execvp's search)."""
    # A PATH the user can search: root's /root/... entries would make it EACCES (126).
    path = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    events = run_as_user(envd.url, [], cmd="no-such-command", envs=path)
    end = events[-1]["event"]["end"]  # type: ignore[index]
    assert end["exitCode"] == 127
    assert decoded(events, "stderr").endswith(": 'no-such-command': No such file or directory\n")
    events = run_as_user(envd.url, [], cmd="/etc/passwd", envs=path)
    assert events[-1]["event"]["end"]["exitCode"] == 126  # type: ignore[index]
    assert decoded(events, "stderr").endswith(": '/etc/passwd': Permission denied\n")
    # A directory on PATH the user may not search: execvp remembers EACCES.
    events = run_as_user(envd.url, [], cmd="no-such-command", envs={"PATH": "/root:/bin"})
    assert events[-1]["event"]["end"]["exitCode"] == 126  # type: ignore[index]
    assert decoded(events, "stderr").endswith(": 'no-such-command': Permission denied\n")


def fork_server_of(daemon: Daemon) -> int:
    """The daemon's fork server: its child in a process group of its own, running envd."""
    found = [
        pid
        for pid in children(daemon.pid)
        if os.getpgid(pid) == pid and b"envd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(found) == 1, found
    return found[0]


def test_daemon_keeps_spawning_when_the_fork_server_dies(kill_after: list[int]) -> None:
    with Daemon() as daemon:
        server = fork_server_of(daemon)
        os.kill(server, signal.SIGKILL)
        # The first Start after the loss may still have gone to the dead server.
        deadline = time.monotonic() + 10
        while server in children(daemon.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
            run_as_user(daemon.url, ["-c", "true"])
        assert server not in children(daemon.pid)  # reaped
        pid = start(daemon.url, sleep_body(False))
        kill_after.append(pid)
        assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "100"
        assert ioprio(pid) == (2, 4)
        assert status(pid)["Uid"].split() == [lookup_user(USER).uid] * 4
        events = run_as_user(daemon.url, ["-c", "echo ok"])
        assert decoded(events, "stdout") == "ok\n"
        assert "fork server lost" in daemon.output()


def test_a_burst_of_starts_all_complete(envd: Daemon) -> None:
    """More Starts at once than the fork server's socket holds: every one is spawned and ends."""

    async def one(i: int) -> bytes:
        payload = json.dumps(
            {"process": {"cmd": "/bin/sh", "args": ["-c", f"echo {i}"]}, "stdin": False}
        ).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", envd.port)
        writer.write(
            b"POST /process.Process/Start HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/connect+json\r\n"
            + f"Content-Length: {len(payload) + 5}\r\n\r\n".encode()
            + envelope(payload)
        )
        data = await reader.read()
        writer.close()
        return data

    async def burst() -> list[bytes]:
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 120)

    answers = asyncio.run(burst())
    for i, data in enumerate(answers):
        assert b'"end"' in data, data[-300:]
        assert base64.b64encode(f"{i}\n".encode()) in data
