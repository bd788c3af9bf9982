"""One running process: its spawn, output readers, input, signals, end and reaping.

Everything runs on the event loop: output fds and the child's pidfd are
watched with `loop.add_reader`, so there is no thread per process and a child
is reaped as soon as it may be, whether or not anyone is subscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import struct
import termios
from collections.abc import Callable

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.execcontext import ExecContext
from envd.gen.process import process_pb2
from envd.host.cgroups import CommandCgroup, Manager, NoopManager, cgroup_kind
from envd.permissions.users import User
from envd.services.process import launch
from envd.services.process.fanout import Fanout
from envd.services.process.status import ExitStatus, from_wait_status

log = logging.getLogger(__name__)

# Upstream reads 32 KiB at a time; with a larger pipe we take up to 256 KiB
# per read when that much is waiting, which cuts per-event cost for bulk
# output (well under the 4 MiB Connect message limit).
PIPE_READ = 256 << 10
PIPE_SIZE = 1 << 20
PTY_READ = 16 << 10
# After a kill, what is still buffered in a pipe is read once, up to this.
FINAL_DRAIN = PIPE_SIZE

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

OnEnd = Callable[["ProcessHandle", ExitStatus], None]


def _nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # a smaller pipe only means smaller reads
        fcntl.fcntl(r, F_SETPIPE_SZ, PIPE_SIZE)
    return r, w


def _write_error_text(e: OSError) -> str:
    # Writing to an fd we closed meanwhile is Go's os.ErrClosed.
    return "file already closed" if e.errno == errno.EBADF else launch.go_errno_text(e.errno or 0)


def _winsize(rows: int, cols: int) -> bytes:
    return struct.pack("HHHH", rows & 0xFFFF, cols & 0xFFFF, 0, 0)


class ProcessHandle:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        pidfd: int,
        *,
        config: process_pb2.ProcessConfig,
        tag: str | None,
        outputs: dict[int, str],
        master: int | None = None,
        stdin: int | None = None,
        cgroup: CommandCgroup | None = None,
        cgroups: Manager | None = None,
    ) -> None:
        self.loop = loop
        self.pid = pid
        self.config = config
        self.tag = tag
        self.master = master
        self.stdin = stdin
        self.on_end: OnEnd | None = None
        # The command's own cgroup: SIGKILL reaches all it started, also outside its group.
        self.cgroup = cgroup
        self._cgroups = cgroups or NoopManager()
        self._pidfd = pidfd
        self._reading = dict(outputs)  # fd → DataEvent member, until EOF
        self._exited = False
        self._abandon_output = False
        self.finished = False
        self._kill_timer: asyncio.TimerHandle | None = None
        self._write_lock = asyncio.Lock()
        self._write_waiter: asyncio.Future[None] | None = None
        self._write_fd = -1
        self.fanout = Fanout(loop, self._pause_reading, self._resume_reading)

    @property
    def terminal(self) -> bool:
        return self.master is not None

    # --- lifecycle -------------------------------------------------------

    def start(self, kill_at: float | None) -> None:
        """Begin reading output and watching for exit (after the first subscriber).

        `kill_at` (loop time) is the end of the process's lifetime: SIGKILL.
        """
        self.loop.add_reader(self._pidfd, self._on_exit)
        self._resume_reading()
        if kill_at is not None:
            self._kill_timer = self.loop.call_at(kill_at, self._on_timeout)

    def _on_timeout(self) -> None:
        self._kill_timer = None
        with contextlib.suppress(ConnectError):
            self.signal(signal.SIGKILL)

    def _pause_reading(self) -> None:
        for fd in self._reading:
            self.loop.remove_reader(fd)

    def _resume_reading(self) -> None:
        for fd, member in self._reading.items():
            self.loop.add_reader(fd, self._read, fd, member)

    def _read(self, fd: int, member: str) -> None:
        try:
            data = os.read(fd, PTY_READ if fd == self.master else PIPE_READ)
        except BlockingIOError:
            return
        except OSError as e:
            # EIO from a terminal master: every slave end is closed.
            if e.errno != errno.EIO:
                log.warning("error reading %s of process %d: %s", member, self.pid, e)
            self._output_ended(fd)
            return
        if not data:
            self._output_ended(fd)
        elif self.fanout.subscribers:
            self.fanout.publish(member, data)
        # else: nobody is listening; upstream discards such output too.

    def _output_ended(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        del self._reading[fd]
        if fd != self.master:
            os.close(fd)
        if not self._reading:
            self._maybe_finish()

    def _on_exit(self) -> None:
        self.loop.remove_reader(self._pidfd)
        self._exited = True
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        # The child stays a zombie while descendants still hold its output
        # open (as upstream), which keeps its pid and process group reserved
        # for signals.
        if self._exited and (not self._reading or self._abandon_output) and not self.finished:
            self._finish()

    def _finish(self) -> None:
        self.finished = True
        for fd, member in list(self._reading.items()):
            self.loop.remove_reader(fd)
            self._drain(fd, member)
        try:
            _, status = os.waitpid(self.pid, os.WNOHANG)
            exit_status = from_wait_status(status)
        except ChildProcessError:
            exit_status = ExitStatus(-1, False, "wait: no child processes")
        self._close_fds()
        self._release_cgroup()
        self.fanout.finish(exit_status)
        if self.on_end is not None:
            self.on_end(self, exit_status)

    def _drain(self, fd: int, member: str) -> None:
        """What a killed process left in its output, read once without waiting."""
        left = FINAL_DRAIN
        while left > 0:
            try:
                data = os.read(fd, min(left, PIPE_READ))
            except OSError:
                return
            if not data:
                return
            left -= len(data)
            if self.fanout.subscribers:
                self.fanout.publish(member, data)

    def _close_fds(self) -> None:
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None
        self._abort_write()
        for fd in self._reading:
            self.loop.remove_reader(fd)
            if fd != self.master:
                os.close(fd)
        self._reading.clear()
        if self.master is not None:
            os.close(self.master)
        if self.stdin is not None:
            os.close(self.stdin)
            self.stdin = None
        if self._pidfd >= 0:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def _release_cgroup(self) -> None:
        if self.cgroup is not None:
            self._cgroups.release(self.cgroup)
            self.cgroup = None

    def close(self) -> None:
        """Daemon shutdown: let go of the child (it keeps running, as upstream)."""
        if self.finished:
            return
        self.finished = True
        self.fanout.close(ConnectError(Code.UNAVAILABLE, "envd is shutting down"))
        self._close_fds()

    # --- control ---------------------------------------------------------

    def signal(self, signum: int) -> None:
        if signum in (signal.SIGKILL, signal.SIGTERM):
            # Upstream stops waiting for output here: descendants that keep
            # the pipes open must not delay the end event.
            self._abandon_output = True
        try:
            if self.terminal:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                # The whole process group, so background children go too.
                os.killpg(self.pid, signum)
        except ProcessLookupError:
            raise ConnectError(
                Code.INTERNAL, "error sending signal: os: process already finished"
            ) from None
        except OSError as e:
            raise ConnectError(
                Code.INTERNAL, f"error sending signal: {launch.go_errno_text(e.errno or 0)}"
            ) from None
        if signum == signal.SIGKILL and self.cgroup is not None:
            # Beyond upstream: also what left the process group (setsid, daemons).
            self.cgroup.kill()
        self._maybe_finish()

    def resize(self, rows: int, cols: int) -> None:
        if self.master is None:
            raise ConnectError(Code.INTERNAL, "error resizing tty: tty not assigned to process")
        try:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, _winsize(rows, cols))
        except OSError as e:
            raise ConnectError(
                Code.INTERNAL, f"error resizing tty: {launch.go_errno_text(e.errno or 0)}"
            ) from None

    async def write_stdin(self, data: bytes) -> None:
        if self.terminal:
            raise ConnectError(
                Code.INTERNAL,
                "error writing to stdin: tty assigned to process"
                " — input should be written to the pty, not the stdin",
            )
        if self.stdin is None:
            raise ConnectError(Code.INTERNAL, "error writing to stdin: stdin not enabled or closed")
        try:
            await self._write(lambda: self.stdin, data)
        except OSError as e:
            raise ConnectError(
                Code.INTERNAL,
                f"error writing to stdin: error writing to stdin of process '{self.pid}':"
                f" write |1: {_write_error_text(e)}",
            ) from None

    async def write_pty(self, data: bytes) -> None:
        if self.master is None:
            raise ConnectError(
                Code.INTERNAL,
                "error writing to tty: tty not assigned to process"
                " — input should be written to the stdin, not the tty",
            )
        try:
            await self._write(lambda: self.master if not self.finished else None, data)
        except OSError as e:
            raise ConnectError(
                Code.INTERNAL,
                f"error writing to tty: error writing to tty of process '{self.pid}':"
                f" write /dev/ptmx: {_write_error_text(e)}",
            ) from None

    async def _write(self, current_fd: Callable[[], int | None], data: bytes) -> None:
        """Write everything, waiting for room without blocking the loop (serialised)."""
        view = memoryview(data)
        async with self._write_lock:
            while view:
                fd = current_fd()
                if fd is None:
                    raise OSError(errno.EBADF, os.strerror(errno.EBADF))
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    await self._writable(fd)

    async def _writable(self, fd: int) -> None:
        waiter = self._write_waiter = self.loop.create_future()
        self._write_fd = fd
        self.loop.add_writer(fd, lambda: waiter.done() or waiter.set_result(None))
        try:
            await waiter
        finally:
            if self._write_fd == fd:
                self.loop.remove_writer(fd)
                self._write_fd = -1
            self._write_waiter = None

    def _abort_write(self) -> None:
        """A pending write on an fd about to be closed fails instead of waiting forever."""
        if self._write_fd >= 0:
            self.loop.remove_writer(self._write_fd)
            self._write_fd = -1
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_exception(OSError(errno.EBADF, "file already closed"))

    def close_stdin(self) -> None:
        if self.terminal:
            raise ConnectError(
                Code.UNKNOWN,
                "error closing stdin: cannot close stdin for PTY process"
                " — send Ctrl+D (0x04) instead",
            )
        if self.stdin is None:
            return
        fd, self.stdin = self.stdin, None
        if self._write_fd == fd:
            self._abort_write()
        try:
            os.close(fd)
        except OSError as e:
            raise ConnectError(
                Code.UNKNOWN, f"error closing stdin: {launch.go_errno_text(e.errno or 0)}"
            ) from None


async def launch_process(
    loop: asyncio.AbstractEventLoop,
    request: process_pb2.StartRequest,
    user: User,
    exec_ctx: ExecContext,
    cgroups: Manager | None = None,
) -> ProcessHandle:
    """Spawn the command in a cgroup of its own (below `user`, or `ptys`; `_system`: none)."""
    cgroups = cgroups or NoopManager()
    tag = request.tag if request.HasField("tag") else None
    cgroup = cgroups.command_cgroup(cgroup_kind(request.HasField("pty"), tag))
    try:
        handle = await _launch_process(loop, request, user, exec_ctx)
    except BaseException:
        if cgroup is not None:
            cgroups.release(cgroup)
        raise
    if cgroup is not None:
        _join_from_parent(cgroup, handle.pid)
        handle.cgroup = cgroup
        handle._cgroups = cgroups
    return handle


def _join_from_parent(cgroup: CommandCgroup, pid: int) -> None:
    # Interim until the spawn paths take the cgroup: the child moved after its spawn.
    with contextlib.suppress(OSError), open(os.path.join(cgroup.path, "cgroup.procs"), "w") as f:
        f.write(str(pid))


async def _launch_process(
    loop: asyncio.AbstractEventLoop,
    request: process_pb2.StartRequest,
    user: User,
    exec_ctx: ExecContext,
) -> ProcessHandle:
    """Spawn the requested command; errors are the RPC errors upstream returns.

    Nothing here blocks the event loop for long: non-terminal children are
    started with posix_spawn (see `launch.posix_spawn_process`), the others
    with Popen in a worker thread, because Popen forks the whole daemon and
    waits until the child has exec'd (a burst of Starts otherwise held `/init`
    up for hundreds of ms). Callers must not cancel this coroutine: the fds it
    hands to the child are closed only once the spawn is over (see
    `ProcessService.start`).
    """
    config = request.process
    command = launch.user_command(config.cmd, config.args)
    creds = launch.credentials(user)
    cwd = launch.resolve_cwd(config.cwd, user, exec_ctx.default_workdir)
    env = launch.build_env(user, exec_ctx, config.envs)
    argv = launch.wrapper_argv(config.cmd, config.args)
    tag = request.tag if request.HasField("tag") else None

    if request.HasField("pty"):
        cols, rows = request.pty.size.cols, request.pty.size.rows
        master, slave = os.openpty()
        try:
            fcntl.ioctl(master, termios.TIOCSWINSZ, _winsize(rows, cols))
            pid = await asyncio.to_thread(
                launch.spawn,
                argv,
                env,
                creds,
                cwd,
                launch.Stdio(slave, slave, slave),
                terminal=True,
            )
        except (launch.SpawnError, OSError) as e:
            os.close(master)
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"error starting pty with command '{command}' in dir '{cwd}'"
                f" with '{cols}' cols and '{rows}' rows: {e}",
            ) from None
        finally:
            os.close(slave)
        _nonblocking(master)
        return _adopt(loop, pid, config, tag, {master: "pty"}, master=master)

    parent_fds: list[int] = []
    child_fds: list[int] = []
    try:
        try:
            out_r, out_w = _pipe()
            parent_fds.append(out_r)
            child_fds.append(out_w)
        except OSError as e:
            raise _pipe_error("stdout", command, e) from None
        try:
            err_r, err_w = _pipe()
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
        stdio = launch.Stdio(stdin_r, out_w, err_w)
        try:
            spawned = launch.posix_spawn_process([config.cmd, *config.args], env, creds, cwd, stdio)
            if spawned is None:
                pid = await asyncio.to_thread(
                    launch.spawn, argv, env, creds, cwd, stdio, terminal=False
                )
            else:
                pid = spawned.pid
                failed = launch.read_report(await _read_to_end(loop, spawned.report))
                if failed is not None:
                    # The shell exits right after reporting.
                    await asyncio.to_thread(os.waitpid, pid, 0)
                    text = launch.go_errno_text(failed)
                    raise launch.SpawnError(f"fork/exec {launch.SHELL}: {text}")
        except launch.SpawnError as e:
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"error starting process '{command}': {e}"
            ) from None
    except BaseException:
        for fd in parent_fds:
            os.close(fd)
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
    for fd in parent_fds:
        _nonblocking(fd)
    return _adopt(loop, pid, config, tag, {out_r: "stdout", err_r: "stderr"}, stdin=stdin_w)


async def _read_to_end(loop: asyncio.AbstractEventLoop, fd: int) -> bytes:
    """Everything written to a pipe until its writers close it; closes `fd`."""
    done: asyncio.Future[None] = loop.create_future()
    data = bytearray()

    def readable() -> None:
        try:
            chunk = os.read(fd, 64)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        data.extend(chunk)
        if not chunk and not done.done():
            done.set_result(None)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return bytes(data)


def _pipe_error(which: str, command: str, e: OSError) -> ConnectError:
    return ConnectError(
        Code.INTERNAL,
        f"error creating {which} pipe for command '{command}':"
        f" {launch.go_errno_text(e.errno or 0)}",
    )


def _adopt(
    loop: asyncio.AbstractEventLoop,
    pid: int,
    config: process_pb2.ProcessConfig,
    tag: str | None,
    outputs: dict[int, str],
    *,
    master: int | None = None,
    stdin: int | None = None,
) -> ProcessHandle:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        # Without a pidfd we could neither reap nor signal safely: undo the spawn.
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for fd in [*outputs, stdin]:
            if fd is not None:
                os.close(fd)
        raise ConnectError(Code.INTERNAL, f"error watching process {pid}: {e}") from None
    return ProcessHandle(
        loop, pid, pidfd, config=config, tag=tag, outputs=outputs, master=master, stdin=stdin
    )
