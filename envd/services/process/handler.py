"""One running process, once `launch.start` has started it: output, input, signals, end, reaping.

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
import termios
from collections.abc import Callable

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.gen.process import process_pb2
from envd.host.cgroups import CommandCgroup, Manager, NoopManager
from envd.services.process import launch
from envd.services.process.fanout import Fanout
from envd.services.process.plan import go_errno_text
from envd.services.process.status import ExitStatus, from_wait_status

# How streams end when the daemon stops (docs/compatibility.md).
SHUTTING_DOWN = "envd is shutting down"
log = logging.getLogger(__name__)

# Upstream reads 32 KiB at a time; with a larger pipe (launch.PIPE_SIZE) we
# take up to 256 KiB per read when that much is waiting, which cuts per-event
# cost for bulk output (well under the 4 MiB Connect message limit).
PIPE_READ = 256 << 10
PTY_READ = 16 << 10
# After a kill, what is still buffered in a pipe is read once, up to this.
FINAL_DRAIN = launch.PIPE_SIZE

OnEnd = Callable[["ProcessHandle", ExitStatus], None]


# Input that cannot be delivered because of the process's state, not an envd
# fault: failed_precondition, as e2b-dev/infra#3622/#3628 propose.
_STDIN_GONE = frozenset({errno.EPIPE, errno.EBADF, errno.EIO})


def _input_code(e: OSError) -> Code:
    return Code.FAILED_PRECONDITION if e.errno in _STDIN_GONE else Code.INTERNAL


def _write_error_text(e: OSError) -> str:
    # Writing to an fd we closed meanwhile is Go's os.ErrClosed.
    return "file already closed" if e.errno == errno.EBADF else go_errno_text(e.errno or 0)


class ProcessHandle:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        child: launch.Child,
        *,
        config: process_pb2.ProcessConfig,
        tag: str | None,
        cgroup: CommandCgroup | None = None,
        cgroups: Manager | None = None,
    ) -> None:
        self.loop = loop
        self.pid = child.pid
        self.config = config
        self.tag = tag
        self.master = child.master
        self.stdin = child.stdin
        self.on_end: OnEnd | None = None
        # The command's own cgroup: SIGKILL reaches all it started, also outside its group.
        self.cgroup = cgroup
        self._cgroups = cgroups or NoopManager()
        self._pidfd = child.pidfd
        self._reading = dict(child.outputs)  # fd → DataEvent member, until EOF
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

    @property
    def kill_at(self) -> float | None:
        """When the lifetime ends (loop time), None when unlimited."""
        return None if self._kill_timer is None else self._kill_timer.when()

    def arm_timeout(self, kill_at: float) -> None:
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._kill_timer = self.loop.call_at(kill_at, self._on_timeout)

    def output_fds(self) -> dict[str, int]:
        """The output descriptors still open, by DataEvent member."""
        return {member: fd for fd, member in self._reading.items()}

    def hold_output(self) -> None:
        """Stop reading output (a live upgrade leaves the rest in the pipes)."""
        self._pause_reading()

    def release_output(self) -> None:
        if not self.fanout.paused and not self.finished:
            self._resume_reading()

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
        else:
            # With nobody listening this goes to the backlog (upstream discards it).
            self.fanout.publish(member, data)

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
        self.fanout.close(ConnectError(Code.UNAVAILABLE, SHUTTING_DOWN))
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
                Code.INTERNAL, f"error sending signal: {go_errno_text(e.errno or 0)}"
            ) from None
        if signum == signal.SIGKILL and self.cgroup is not None:
            # Beyond upstream: also what left the process group (setsid, daemons).
            self.cgroup.kill()
        self._maybe_finish()

    def resize(self, rows: int, cols: int) -> None:
        if self.master is None:
            raise ConnectError(Code.INTERNAL, "error resizing tty: tty not assigned to process")
        try:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, launch.winsize(rows, cols))
        except OSError as e:
            raise ConnectError(
                Code.INTERNAL, f"error resizing tty: {go_errno_text(e.errno or 0)}"
            ) from None

    async def write_stdin(self, data: bytes) -> None:
        if self.terminal:
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                "error writing to stdin: tty assigned to process"
                " — input should be written to the pty, not the stdin",
            )
        if self.stdin is None:
            raise ConnectError(
                Code.FAILED_PRECONDITION, "error writing to stdin: stdin not enabled or closed"
            )
        try:
            await self._write(lambda: self.stdin, data)
        except OSError as e:
            raise ConnectError(
                _input_code(e),
                f"error writing to stdin: error writing to stdin of process '{self.pid}':"
                f" write |1: {_write_error_text(e)}",
            ) from None

    async def write_pty(self, data: bytes) -> None:
        if self.master is None:
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                "error writing to tty: tty not assigned to process"
                " — input should be written to the stdin, not the tty",
            )
        try:
            await self._write(lambda: self.master if not self.finished else None, data)
        except OSError as e:
            raise ConnectError(
                _input_code(e),
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
        self.loop.add_writer(fd, _wake, waiter)
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
                Code.FAILED_PRECONDITION,
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
                Code.UNKNOWN, f"error closing stdin: {go_errno_text(e.errno or 0)}"
            ) from None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
