"""How a requested command becomes a running child: `start(request, ...) -> Child`.

This is the one launch path: resolve the user's credentials, environment and
cwd into a `Plan`, create the daemon's ends (pipes, or a terminal), let the
spawner `choose_spawner` picks start the child, and hand back a plain
description of it for `handler.ProcessHandle` to adopt. Errors are the RPC
errors upstream returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import signal
import struct
import termios
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.execcontext import ExecContext
from envd.gen.process import process_pb2
from envd.permissions.paths import PathError, expand_and_resolve
from envd.permissions.users import User, supplementary_groups
from envd.services.process.plan import (
    ENVD_PATH,
    SHELL,
    Credentials,
    Plan,
    SpawnError,
    go_errno_text,
)
from envd.services.process.spawners import Stdio, choose_spawner

# Upstream reads 32 KiB at a time; with a larger pipe we take up to 256 KiB
# per read when that much is waiting (see handler.PIPE_READ).
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(slots=True)
class Child:
    """A started child, as the daemon holds it: nothing here needs the request any more.

    `outputs` maps each read end (pipe, or the terminal master) to its
    `DataEvent` member; `stdin` is the write end of the stdin pipe (None with
    `stdin: false` or a terminal); `master` is the terminal master, which is
    also the input fd for a terminal.
    """

    pid: int
    pidfd: int
    outputs: dict[int, str]
    stdin: int | None = None
    master: int | None = None


def user_command(cmd: str, args: Sequence[str]) -> str:
    """The command as upstream prints it in messages: `cmd args...` joined by spaces."""
    return " ".join([cmd, *args])


def _go_parse_uint32(text: str, what: str) -> int:
    # Go's strconv.ParseUint(s, 10, 32) accepts only ASCII digits.
    if text and text.isascii() and text.isdigit():
        value = int(text)
        if value < 1 << 32:
            return value
        reason = "value out of range"
    else:
        reason = "invalid syntax"
    raise ConnectError(
        Code.INTERNAL,
        f"error parsing {what} '{text}': strconv.ParseUint: parsing {json.dumps(text)}: {reason}",
    )


def credentials(user: User) -> Credentials:
    uid = _go_parse_uint32(user.uid, "uid")
    gid = _go_parse_uint32(user.gid, "gid")
    return Credentials(uid, gid, supplementary_groups(user, gid))


def build_env(user: User, exec_ctx: ExecContext, request_envs: Mapping[str, str]) -> list[str]:
    """`KEY=value` entries; later sources override earlier ones (upstream's order)."""
    env: dict[str, str] = {}
    entries = [
        f"PATH={ENVD_PATH}",
        f"HOME={user.home}",
        f"USER={user.name}",
        f"LOGNAME={user.name}",
        *(f"{k}={v}" for k, v in exec_ctx.envs().items()),
        *(f"{k}={v}" for k, v in request_envs.items()),
    ]
    for entry in entries:
        # Split at the first '=' as the kernel's consumers do, so a key that
        # itself contains '=' yields exactly the entry upstream would pass.
        key, _, value = entry.partition("=")
        if not key:
            # Upstream hands `=value` to execve and its shell drops it, so the
            # command never sees it; Python's spawn would refuse it instead.
            continue
        env.pop(key, None)
        env[key] = value
    return [f"{k}={v}" for k, v in env.items()]


def resolve_cwd(cwd: str, user: User, default_workdir: str | None) -> str:
    try:
        path = expand_and_resolve(cwd, user, default_workdir)
    except PathError as e:
        raise ConnectError(Code.INVALID_ARGUMENT, str(e)) from None
    try:
        os.stat(path)
    except FileNotFoundError:
        raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{path}' does not exist") from None
    except (OSError, ValueError):
        pass  # upstream ignores other stat errors here; the spawn reports them
    return path


def winsize(rows: int, cols: int) -> bytes:
    return struct.pack("HHHH", rows & 0xFFFF, cols & 0xFFFF, 0, 0)


def plan_for(
    request: process_pb2.StartRequest, user: User, exec_ctx: ExecContext, cgroup: str | None
) -> Plan:
    config = request.process
    return Plan(
        command=[config.cmd, *config.args],
        env=build_env(user, exec_ctx, config.envs),
        creds=credentials(user),
        cwd=resolve_cwd(config.cwd, user, exec_ctx.default_workdir),
        terminal=request.HasField("pty"),
        cgroup=cgroup,
    )


# Spawn failures that go away once the sandbox has room again: resource_exhausted
# (the SDKs' rate-limit error, so clients retry), as e2b-dev/infra#3503 proposes;
# ENOSPC is what /dev/ptmx says when kernel.pty.max is used up.
_EXHAUSTED = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE})


def _start_code(e: BaseException, *, pty: bool = False) -> Code:
    cause = e.__cause__ if isinstance(e, SpawnError) else e
    if isinstance(cause, OSError) and (
        cause.errno in _EXHAUSTED or (pty and cause.errno == errno.ENOSPC)
    ):
        return Code.RESOURCE_EXHAUSTED
    if isinstance(cause, RuntimeError):  # no thread left for the spawn
        return Code.RESOURCE_EXHAUSTED
    return Code.INVALID_ARGUMENT


async def start(
    loop: asyncio.AbstractEventLoop,
    request: process_pb2.StartRequest,
    user: User,
    exec_ctx: ExecContext,
    *,
    cgroup: str | None = None,
) -> Child:
    """Start the requested command; `cgroup` as in `Plan`.

    Nothing here blocks the event loop for long (see `spawners`). Callers must
    not cancel this coroutine: the fds it hands to the child are closed only
    once the spawn is over (see `ProcessService.start`).
    """
    plan = plan_for(request, user, exec_ctx, cgroup)
    if plan.terminal:
        child = await _start_terminal(loop, request, plan)
    else:
        child = await _start_piped(loop, request, plan)
    _watch(child)
    return child


def _watch(child: Child) -> None:
    try:
        child.pidfd = os.pidfd_open(child.pid)
    except OSError as e:
        # Without a pidfd we could neither reap nor signal safely: undo the spawn.
        os.kill(child.pid, signal.SIGKILL)
        os.waitpid(child.pid, 0)
        for fd in [*child.outputs, child.stdin]:
            if fd is not None:
                os.close(fd)
        raise ConnectError(Code.INTERNAL, f"error watching process {child.pid}: {e}") from None


async def _start_terminal(
    loop: asyncio.AbstractEventLoop, request: process_pb2.StartRequest, plan: Plan
) -> Child:
    cols, rows = request.pty.size.cols, request.pty.size.rows
    try:
        master, slave = os.openpty()
    except OSError as e:
        raise ConnectError(
            _start_code(e, pty=True),
            f"error starting pty with command '{user_command_of(plan)}' in dir '{plan.cwd}'"
            f" with '{cols}' cols and '{rows}' rows:"
            f" open /dev/ptmx: {go_errno_text(e.errno or 0)}",
        ) from None
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, winsize(rows, cols))
        pid = await choose_spawner(plan).spawn(loop, plan, Stdio(slave, slave, slave))
    except (SpawnError, OSError, RuntimeError) as e:
        os.close(master)
        raise ConnectError(
            _start_code(e, pty=True),
            f"error starting pty with command '{user_command_of(plan)}' in dir '{plan.cwd}'"
            f" with '{cols}' cols and '{rows}' rows: {e}",
        ) from None
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    return Child(pid, -1, {master: "pty"}, master=master)


async def _start_piped(
    loop: asyncio.AbstractEventLoop, request: process_pb2.StartRequest, plan: Plan
) -> Child:
    command = user_command_of(plan)
    parent_fds: list[int] = []
    child_fds: list[int] = []
    try:
        try:
            out_r, out_w = _output_pipe()
            parent_fds.append(out_r)
            child_fds.append(out_w)
        except OSError as e:
            raise _pipe_error("stdout", command, e) from None
        try:
            err_r, err_w = _output_pipe()
            parent_fds.append(err_r)
            child_fds.append(err_w)
        except OSError as e:
            raise _pipe_error("stderr", command, e) from None
        stdin_w: int | None = None
        if not request.HasField("stdin") or request.stdin:
            try:
                stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
                parent_fds.append(stdin_w)
                child_fds.append(stdin_r)
            except OSError as e:
                raise _pipe_error("stdin", command, e) from None
        else:
            stdin_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            child_fds.append(stdin_r)
        try:
            pid = await choose_spawner(plan).spawn(loop, plan, Stdio(stdin_r, out_w, err_w))
        except SpawnError as e:
            raise ConnectError(_start_code(e), f"error starting process '{command}': {e}") from None
        except RuntimeError as e:  # the worker thread for the spawn could not start
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED,
                f"error starting process '{command}': fork/exec {SHELL}: {e}",
            ) from None
    except BaseException:
        for fd in parent_fds:
            os.close(fd)
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
    for fd in parent_fds:
        os.set_blocking(fd, False)
    return Child(pid, -1, {out_r: "stdout", err_r: "stderr"}, stdin=stdin_w)


def user_command_of(plan: Plan) -> str:
    return user_command(plan.command[0], plan.command[1:])


def _output_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # a smaller pipe only means smaller reads
        fcntl.fcntl(r, F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


def _pipe_error(which: str, command: str, e: OSError) -> ConnectError:
    return ConnectError(
        Code.RESOURCE_EXHAUSTED if e.errno in _EXHAUSTED else Code.INTERNAL,
        f"error creating {which} pipe for command '{command}': {go_errno_text(e.errno or 0)}",
    )
