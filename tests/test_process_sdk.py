"""The unmodified e2b SDK (sync and async) in debug mode against the real daemon."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    InvalidArgumentException,
    NotFoundException,
    PtySize,
    Sandbox,
    TimeoutException,
)

from tests.daemon import wait_until


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture(autouse=True)
def no_leftovers(sandbox: Sandbox) -> Iterator[None]:
    before = {p.pid for p in sandbox.commands.list()}
    yield
    for p in sandbox.commands.list():
        if p.pid not in before:
            sandbox.commands.kill(p.pid)


# --- sync --------------------------------------------------------------------------


def test_run(sandbox: Sandbox) -> None:
    # As `user`: root's login shell reads the machine's own dotfiles, whose noise on
    # stderr (a missing pyenv, say) is not ours to assert on.
    result = sandbox.commands.run("echo out; echo err >&2", user="user")
    assert (result.stdout, result.stderr, result.exit_code, result.error) == (
        "out\n",
        "err\n",
        0,
        None,
    )


def test_nonzero_exit(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitException) as info:
        sandbox.commands.run("echo partial; exit 3")
    assert info.value.exit_code == 3
    assert info.value.error == "exit status 3"
    assert info.value.stdout == "partial\n"


def test_background_list_kill(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 30", background=True)
    listed = {p.pid: p for p in sandbox.commands.list()}
    assert listed[handle.pid].cmd == "/bin/bash"
    assert listed[handle.pid].args == ["-l", "-c", "sleep 30"]
    assert sandbox.commands.kill(handle.pid) is True
    # Reaped at once, with or without a subscriber.
    assert wait_until(lambda: gone(handle.pid), timeout=5)
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert info.value.error == "signal: killed"
    assert sandbox.commands.kill(handle.pid) is False


def test_connect_sees_later_output(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run(
        "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.3; done", background=True
    )
    time.sleep(0.5)
    attached = sandbox.commands.connect(handle.pid)
    result = attached.wait()
    assert "line6" in result.stdout
    # The original handle still gets everything it was connected for.
    assert "line1" in handle.wait().stdout


def test_connect_unknown_pid(sandbox: Sandbox) -> None:
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(999999)


def test_stdin_and_close_stdin(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("cat; echo done", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "hello\n")
    sandbox.commands.send_stdin(handle.pid, "world\n")
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "hello\nworld\ndone\n"


def test_envs_and_cwd(sandbox: Sandbox) -> None:
    result = sandbox.commands.run("echo $FOO; pwd", envs={"FOO": "bar baz"}, cwd="/tmp")
    assert result.stdout == "bar baz\n/tmp\n"
    assert sandbox.commands.run("pwd").stdout == "/root\n"
    with pytest.raises(InvalidArgumentException) as info:
        sandbox.commands.run("pwd", cwd="/does/not/exist")
    assert "cwd '/does/not/exist' does not exist" in str(info.value)


def test_user(sandbox: Sandbox) -> None:
    import pwd  # noqa: PLC0415

    uid = pwd.getpwnam("user").pw_uid
    result = sandbox.commands.run("id -u; echo $HOME; echo $USER; pwd", user="user")
    assert result.stdout == f"{uid}\n/home/user\nuser\n/home/user\n"


def test_timeout(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 30", background=True, timeout=1)
    pid = handle.pid
    with pytest.raises(TimeoutException):
        handle.wait()
    assert wait_until(lambda: gone(pid), timeout=5)
    assert pid not in {p.pid for p in sandbox.commands.list()}
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30", timeout=1)


def test_kill_is_visible_to_other_commands(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 30", background=True)
    sandbox.commands.kill(handle.pid)
    with pytest.raises(CommandExitException):
        sandbox.commands.run(f"kill -0 {handle.pid}")


def test_pty_create_resize_input_kill_reconnect(sandbox: Sandbox) -> None:
    terminal = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.resize(terminal.pid, PtySize(rows=30, cols=123))
    sandbox.pty.send_stdin(terminal.pid, b"tput cols; echo marker-$((6*7))\n")
    time.sleep(0.5)
    # Reconnect: a second subscriber sees output produced after it attached.
    attached = sandbox.pty.connect(terminal.pid)
    sandbox.pty.send_stdin(terminal.pid, b"echo again-$((1+1))\n")
    time.sleep(0.5)
    assert sandbox.pty.kill(terminal.pid) is True
    first: list[bytes] = []
    with pytest.raises(CommandExitException) as info:
        terminal.wait(on_pty=first.append)
    assert info.value.error == "signal: killed"
    output = b"".join(first)
    assert b"123\r\n" in output
    assert b"marker-42" in output
    second: list[bytes] = []
    with pytest.raises(CommandExitException):
        attached.wait(on_pty=second.append)
    assert b"again-2" in b"".join(second)


def test_pty_exit_code(sandbox: Sandbox) -> None:
    terminal = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.send_stdin(terminal.pid, b"exit 7\n")
    with pytest.raises(CommandExitException) as info:
        terminal.wait()
    assert info.value.exit_code == 7


# --- async -------------------------------------------------------------------------


async def test_async_run_and_exit(async_sandbox: AsyncSandbox) -> None:
    result = await async_sandbox.commands.run("echo hi")
    assert result.stdout == "hi\n"
    with pytest.raises(CommandExitException) as info:
        await async_sandbox.commands.run("exit 5")
    assert info.value.error == "exit status 5"


async def test_async_background_stdin_kill(async_sandbox: AsyncSandbox) -> None:
    handle = await async_sandbox.commands.run("cat", background=True, stdin=True)
    await async_sandbox.commands.send_stdin(handle.pid, "x\n")
    await async_sandbox.commands.close_stdin(handle.pid)
    assert (await handle.wait()).stdout == "x\n"
    handle = await async_sandbox.commands.run("sleep 30", background=True)
    assert handle.pid in {p.pid for p in await async_sandbox.commands.list()}
    assert await async_sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException):
        await handle.wait()
    assert await async_sandbox.commands.kill(handle.pid) is False


async def test_async_connect_and_user(async_sandbox: AsyncSandbox) -> None:
    handle = await async_sandbox.commands.run("sleep 0.5; echo $HOME", background=True, user="user")
    attached = await async_sandbox.commands.connect(handle.pid)
    assert (await attached.wait()).stdout == "/home/user\n"
    with pytest.raises(NotFoundException):
        await async_sandbox.commands.connect(999999)


async def test_async_timeout(async_sandbox: AsyncSandbox) -> None:
    with pytest.raises(TimeoutException):
        await async_sandbox.commands.run("sleep 30", timeout=1)


async def test_async_pty(async_sandbox: AsyncSandbox) -> None:
    chunks: list[bytes] = []
    terminal = await async_sandbox.pty.create(PtySize(rows=24, cols=80), on_data=chunks.append)
    await async_sandbox.pty.resize(terminal.pid, PtySize(rows=24, cols=99))
    await async_sandbox.pty.send_stdin(terminal.pid, b"tput cols; exit 0\n")
    result = await terminal.wait()
    assert result.exit_code == 0
    assert b"99\r\n" in b"".join(chunks)
