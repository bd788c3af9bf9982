"""The ways a child can be started, and the one place that picks among them (`choose_spawner`).

Every spawner gets the same `Plan` and the child's ends of its stdio, and
leaves the child exactly as upstream's wrapper does (see `launch`). Each one
returns only once the child has either exec'd or failed, with the failure as
Go's fork/exec text (`SpawnError`); the caller owns reaping the pid.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
import subprocess
import termios
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from envd.services.process import forkserver
from envd.services.process.plan import (
    IO_CLASS,
    IO_LEVEL,
    OOM_SCORE_ADJ,
    SHELL,
    Plan,
    SpawnError,
    check_nul,
    go_errno_text,
    nice_delta,
    priority_helpers,
    wrapper_script,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Stdio:
    """The child's ends: what becomes its fds 0, 1 and 2."""

    stdin: int
    stdout: int
    stderr: int


class Spawner(Protocol):
    name: str

    async def spawn(self, loop: asyncio.AbstractEventLoop, plan: Plan, stdio: Stdio) -> int:
        """Start the child; its pid once it has exec'd, or `SpawnError`."""
        ...


def join_cgroup(cgroup: str) -> None:
    """Move the calling process into a cgroup v2 directory (`0` means the writer)."""
    fd = os.open(os.path.join(cgroup, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


# --- the fork server --------------------------------------------------------


class ForkServerSpawner:
    """Children started by the fork server (see `forkserver`), the daemon's side.

    One request per spawn goes over a SEQPACKET socket with the child's stdio
    fds; the reply (pid, or an errno) comes once the child has entered its cwd.
    Nothing here blocks: the socket is watched with `loop.add_reader`, and
    replies are matched to requests by sequence number.
    """

    name = "forkserver"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self._seq = 0
        self._waiting: dict[int, asyncio.Future[tuple[int, int]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._send_lock = asyncio.Lock()
        self.alive = True

    async def spawn(self, loop: asyncio.AbstractEventLoop, plan: Plan, stdio: Stdio) -> int:
        check_nul(plan.command, plan.env, plan.cwd)
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        data = _request(seq, plan).encode()
        if len(data) > forkserver.MAX_REQUEST:
            return await POPEN.spawn(loop, plan, stdio)
        self._attach(loop)
        reply: asyncio.Future[tuple[int, int]] = loop.create_future()
        self._waiting[seq] = reply
        try:
            await self._send(loop, data, [stdio.stdin, stdio.stdout, stdio.stderr])
        except OSError as e:
            # Nothing reached the server, so nothing was started.
            self._waiting.pop(seq, None)
            self._lost(e)
            return await POPEN.spawn(loop, plan, stdio)
        try:
            pid, error = await reply
        except ConnectionError as e:
            raise SpawnError(f"fork/exec {SHELL}: {go_errno_text(e.errno or errno.EPIPE)}") from e
        if error:
            if pid > 0:
                # It exits right after reporting; it is our child, so ours to reap.
                await asyncio.to_thread(os.waitpid, pid, 0)
            # The errno as the cause: EAGAIN and friends are resource_exhausted.
            cause = OSError(error, os.strerror(error))
            raise SpawnError(f"fork/exec {SHELL}: {go_errno_text(error)}") from cause
        return pid

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self.sock.fileno())
            self._loop = loop
            loop.add_reader(self.sock.fileno(), self._on_replies)

    async def _send(self, loop: asyncio.AbstractEventLoop, data: bytes, fds: list[int]) -> None:
        # One sender at a time waits for room (a burst of Starts fills the
        # socket): the loop keeps one writer callback per fd, so a second
        # waiter would replace the first one's and leave it waiting forever.
        async with self._send_lock:
            while True:
                try:
                    socket.send_fds(self.sock, [data], fds)
                    return
                except BlockingIOError:
                    writable: asyncio.Future[None] = loop.create_future()
                    loop.add_writer(self.sock.fileno(), _wake, writable)
                    try:
                        await writable
                    finally:
                        loop.remove_writer(self.sock.fileno())

    def _on_replies(self) -> None:
        while True:
            try:
                data = self.sock.recv(64)
            except BlockingIOError:
                return
            except OSError as e:
                self._lost(e)
                return
            if not data:
                self._lost(ConnectionResetError(errno.ECONNRESET, "fork server exited"))
                return
            seq, pid, error = forkserver.decode_reply(data)
            waiter = self._waiting.pop(seq, None)
            if waiter is not None and not waiter.done():
                waiter.set_result((pid, error))

    def _lost(self, e: OSError) -> None:
        """The server is gone: fail what waits, and let `choose_spawner` pick another way."""
        if self.alive:
            log.error("fork server lost (%s); spawning with Popen from now on", e)
        self.close()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_later(1, forkserver.reap)  # it is exiting, if not gone yet

    def close(self) -> None:
        if not self.alive:
            return
        self.alive = False
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionResetError(errno.EPIPE, "fork server exited"))
        self._waiting.clear()
        self.sock.close()


def _request(seq: int, plan: Plan) -> forkserver.Request:
    ionice, nice = priority_helpers()
    return forkserver.Request(
        seq=seq,
        argv=plan.command,
        env=plan.env,
        uid=plan.creds.uid,
        gid=plan.creds.gid,
        groups=plan.creds.groups,
        cwd=plan.cwd,
        terminal=plan.terminal,
        cgroup=plan.cgroup,
        oom_score_adj=OOM_SCORE_ADJ,
        ioprio=None if ionice is None else (IO_CLASS << 13) | IO_LEVEL,
        nice=nice,
        nice_delta=nice_delta(),
        base_nice=os.getpriority(os.PRIO_PROCESS, 0),
        ionice=ionice,
    )


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# --- Popen in a worker thread ---------------------------------------------


class PopenSpawner:
    """Where no fork server runs: `Popen` of upstream's `/bin/sh` wrapper, in a worker thread.

    Popen forks the whole daemon and waits until the child has exec'd, so it
    runs off the event loop (the fork of a big process still holds the GIL
    for a few ms). Terminal children lead a new session with the
    terminal as controlling tty; the others get their own process group.
    """

    name = "popen"

    async def spawn(self, loop: asyncio.AbstractEventLoop, plan: Plan, stdio: Stdio) -> int:
        return await asyncio.to_thread(popen_spawn, plan, stdio)


def popen_spawn(plan: Plan, stdio: Stdio) -> int:
    argv = [SHELL, "-c", wrapper_script(), "--", *plan.command]
    check_nul(argv, plan.env, plan.cwd)
    creds = plan.creds
    terminal = plan.terminal
    cgroup = plan.cgroup

    # Changing directory as root is the same before or after setuid, and a
    # child without Python code in it is safer (no preexec_fn) and faster.
    if not terminal and cgroup is None and creds.uid == 0:
        return _popen(argv, plan, stdio, cwd=plan.cwd)

    # The child reports a failed setup step's errno here, as Go's fork/exec
    # does; close-on-exec, so a successful exec leaves it empty.
    report_r, report_w = os.pipe2(os.O_CLOEXEC)

    def child_setup() -> None:
        # Runs in the child. Without a cgroup Popen has already dropped
        # privileges; with one, the child joins it as root first and then
        # drops them here, so nothing it ever runs starts outside.
        try:
            if cgroup is not None:
                join_cgroup(cgroup)
                os.setgroups(creds.groups)
                os.setregid(creds.gid, creds.gid)
                os.setreuid(creds.uid, creds.uid)
            if terminal:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            os.chdir(plan.cwd)
        except OSError as e:
            os.write(report_w, (e.errno or errno.EIO).to_bytes(4, "little"))
            raise

    try:
        return _popen(argv, plan, stdio, setup=child_setup, set_ids=cgroup is None)
    except SpawnError:
        # Popen has already reaped a child that failed in child_setup.
        os.close(report_w)
        report_w = -1
        raw = os.read(report_r, 4)
        if len(raw) == 4:
            code = int.from_bytes(raw, "little")
            cause = OSError(code, os.strerror(code))
            raise SpawnError(f"fork/exec {SHELL}: {go_errno_text(code)}") from cause
        raise
    finally:
        os.close(report_r)
        if report_w >= 0:
            os.close(report_w)


def _popen(
    argv: list[str],
    plan: Plan,
    stdio: Stdio,
    *,
    cwd: str | None = None,
    setup: Callable[[], None] | None = None,
    set_ids: bool = True,
) -> int:
    creds = plan.creds
    try:
        # preexec_fn is only given for the steps Popen cannot do itself
        # (cgroup before the ids, controlling tty, chdir after setuid); it
        # calls C functions only, which stay safe in a forked child even with
        # other threads around.
        popen = subprocess.Popen(
            argv,
            stdin=stdio.stdin,
            stdout=stdio.stdout,
            stderr=stdio.stderr,
            env=plan.env_map,
            cwd=cwd,
            close_fds=True,
            user=creds.uid if set_ids else None,
            group=creds.gid if set_ids else None,
            extra_groups=creds.groups if set_ids else None,
            start_new_session=plan.terminal,
            process_group=None if plan.terminal else 0,
            preexec_fn=setup,  # noqa: PLW1509
        )
    except OSError as e:
        raise SpawnError(f"fork/exec {SHELL}: {go_errno_text(e.errno or errno.EIO)}") from e
    except subprocess.SubprocessError as e:
        raise SpawnError(f"fork/exec {SHELL}: {e}") from e
    # Our pidfd reaper owns the pid from here on: a returncode tells Popen
    # that it must neither wait for the child nor warn about it in __del__.
    popen.returncode = 0
    return popen.pid


# --- the choice -------------------------------------------------------------

POPEN = PopenSpawner()


class _ForkServer:
    spawner: ForkServerSpawner | None = None


def fork_server() -> ForkServerSpawner | None:
    """The spawner for the fork server `envd.cli` started, if it did and it still runs."""
    sock = forkserver.connection()
    if sock is None:
        return None
    current = _ForkServer.spawner
    if current is None or current.sock is not sock:
        current = _ForkServer.spawner = ForkServerSpawner(sock)
    return current if current.alive else None


def stop_fork_server() -> None:
    """Let the fork server go (it exits; its children keep running). For tests."""
    if _ForkServer.spawner is not None:
        _ForkServer.spawner.close()
        _ForkServer.spawner = None
    forkserver.stop()


def choose_spawner(plan: Plan) -> Spawner:
    """The fork server when there is one (any plan); else Popen, which can do everything."""
    return fork_server() or POPEN
