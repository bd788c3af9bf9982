"""Pieces of the process service that need no daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from connectrpc.errors import ConnectError

from envd.execcontext import ExecContext
from envd.permissions.users import User, UserLookupError, lookup_user, supplementary_groups
from envd.rpc.headers import keepalive_interval
from envd.services.process import fanout, launch, plan
from envd.services.process.status import ExitStatus, from_wait_status


def wait_status(script: str) -> int:
    proc = subprocess.Popen(["/bin/sh", "-c", script])
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = 0
    return status


def test_exit_status_strings() -> None:
    assert from_wait_status(wait_status("exit 0")) == ExitStatus(0, True, "exit status 0")
    assert from_wait_status(wait_status("exit 0")).error is None
    three = from_wait_status(wait_status("exit 3"))
    assert (three.exit_code, three.exited, three.status, three.error) == (
        3,
        True,
        "exit status 3",
        "exit status 3",
    )
    killed = from_wait_status(wait_status("kill -9 $$"))
    assert (killed.exit_code, killed.exited, killed.error) == (-1, False, "signal: killed")
    assert from_wait_status(wait_status("kill -USR2 $$")).status == "signal: user defined signal 2"
    assert from_wait_status(wait_status("kill -34 $$")).status == "signal: signal 34"
    assert from_wait_status(signal.SIGSEGV | 0x80).status == (
        "signal: segmentation fault (core dumped)"
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, 90),
        ("50", 50),
        ("+7", 7),
        ("0", 90),
        ("-3", 90),
        ("x", 90),
        ("1.5", 90),
        ("", 90),
        (" 5", 90),
        ("1_0", 90),
    ],
)
def test_keepalive_interval(value: str | None, seconds: int) -> None:
    headers = {} if value is None else {"keepalive-ping-interval": value}
    assert keepalive_interval(headers) == seconds


def test_env_precedence() -> None:
    user = User("alice", "1000", "1000", "/home/alice")
    ctx = ExecContext(user_envs={"A": "init", "HOME": "/init-home"}, internal_envs={"E": "1"})
    env = launch.build_env(user, ctx, {"A": "request", "K=X": "v"})
    as_dict = dict(e.partition("=")[::2] for e in env)
    assert as_dict["A"] == "request"
    assert as_dict["HOME"] == "/init-home"
    assert as_dict["USER"] == as_dict["LOGNAME"] == "alice"
    assert as_dict["E"] == "1"
    assert as_dict["PATH"] == plan.ENVD_PATH
    # A key containing '=' yields the same entry Go would pass.
    assert "K=X=v" in env


def test_wrapper_argv() -> None:
    argv = plan.wrapper_argv("/bin/echo", ["a b", "c"])
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[2].startswith("echo 100 > /proc/$$/oom_score_adj && exec ")
    assert argv[2].endswith('"${@}"')
    assert argv[3:] == ["--", "/bin/echo", "a b", "c"]


def test_bad_uid_is_internal_error() -> None:
    with pytest.raises(ConnectError) as info:
        launch.credentials(User("x", "abc", "0", "/"))
    assert info.value.message == (
        "error parsing uid 'abc': strconv.ParseUint: parsing \"abc\": invalid syntax"
    )


async def test_fanout_merges_for_a_lagging_subscriber_and_keeps_order() -> None:
    loop = asyncio.get_running_loop()
    out = fanout.Fanout(loop, lambda: None, lambda: None)
    sub = out.subscribe(90)
    for i in range(10):
        out.publish("stdout", bytes([i]) * 10)
    out.publish("stderr", b"E")
    out.publish("stdout", b"Z")
    out.finish(ExitStatus(0, True, "exit status 0"))
    items = [await sub.next() for _ in range(4)]
    assert items[0] == ("stdout", b"".join(bytes([i]) * 10 for i in range(10)))
    assert items[1:3] == [("stderr", b"E"), ("stdout", b"Z")]
    assert isinstance(items[3], ExitStatus)


async def test_fanout_cuts_off_only_a_subscriber_that_holds_others_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fanout, "STALL_LIMIT", 0.05)
    loop = asyncio.get_running_loop()
    paused: list[bool] = []
    out = fanout.Fanout(loop, lambda: paused.append(True), lambda: paused.append(False))
    slow = out.subscribe(90)
    chunk = b"x" * (1 << 20)
    for _ in range(9):
        out.publish("stdout", chunk)
    assert paused == [True]
    # Alone, the slow subscriber only applies back-pressure; it is never cut off.
    await asyncio.sleep(0.2)
    assert out.subscribers == [slow]
    fast = out.subscribe(90)
    await asyncio.sleep(0.2)
    assert out.subscribers == [fast]
    assert paused[-1] is False
    with pytest.raises(ConnectError) as info:
        await slow.next()
    assert info.value.code.value == "aborted"


async def test_subscriber_keepalive() -> None:
    out = fanout.Fanout(asyncio.get_running_loop(), lambda: None, lambda: None)
    sub = out.subscribe(0.05)
    assert await sub.next() is fanout.KEEPALIVE


def test_account_files_are_reread_when_they_change(tmp_path: Path) -> None:
    """Parsed once per change: a user added (or a group membership) is seen at the next lookup."""
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\n")
    group.write_text("root:x:0:\n")
    with pytest.raises(UserLookupError):
        lookup_user("alice", str(passwd))
    # Replaced as useradd does (a new inode), then appended to in place.
    new = tmp_path / "passwd.new"
    new.write_text("root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n")
    os.replace(new, passwd)
    alice = lookup_user("alice", str(passwd))
    assert (alice.uid, alice.home) == ("1000", "/home/alice")
    assert supplementary_groups(alice, 1000, str(group)) == [1000]
    with group.open("a") as f:
        f.write("dev:x:50:alice\n")
    assert supplementary_groups(alice, 1000, str(group)) == [1000, 50]
    group.unlink()
    assert supplementary_groups(alice, 1000, str(group)) == [1000]
