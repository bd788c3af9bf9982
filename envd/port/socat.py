"""socat forwards, started and stopped as upstream does, reaped through a pidfd.

Command line, process group and environment are upstream's. Where a `socats`
cgroup directory is given, the child joins it itself before exec: a shell
writes `0` to `cgroup.procs` and then `exec`s socat (same pid, same command
line afterwards). Writing the pid from the parent after the spawn would leave
socat's first forked connection handlers behind in envd's cgroup if a client
connected within that window (spec §7's note on CLONE_INTO_CGROUP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable, Sequence

from envd.services.process.status import from_wait_status

log = logging.getLogger("envd.port.socat")

SHELL = "/bin/sh"
# `$1` is the cgroup.procs path; everything after it is socat's argv.
_JOIN_SCRIPT = 'echo 0 > "$1" && shift && exec "$@"'


def find_socat(path: str | None = None) -> str | None:
    """socat on envd's PATH, looked up for each new forward as Go's exec does."""
    return shutil.which("socat", path=os.environ.get("PATH", "") if path is None else path)


def socat_argv(port: int, family: int, forward_ip: str) -> list[str]:
    return [
        "socat",
        "-d",
        "-d",
        "-d",
        f"TCP4-LISTEN:{port},bind={forward_ip},reuseaddr,fork",
        f"TCP{family}:localhost:{port}",
    ]


def spawn(executable: str, argv: Sequence[str], cgroup_dir: str | None = None) -> int:
    """Start socat in its own process group (and cgroup); returns its pid.

    posix_spawn: nothing forks the daemon on the event loop. stdio is
    /dev/null, as Go's exec.Cmd gives a child with no Stdout/Stderr set.
    """
    program, args = executable, list(argv)
    if cgroup_dir is not None:
        procs = os.path.join(cgroup_dir, "cgroup.procs")
        program, args = SHELL, [SHELL, "-c", _JOIN_SCRIPT, "sh", procs, executable, *argv[1:]]
        # exec keeps the pid but takes argv[0] from the path; socat's own
        # messages and `ps` then show the full path, which nothing parses.
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        return os.posix_spawn(
            program,
            args,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, devnull, 2),
            ],
            setpgroup=0,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            setsigmask=(),
        )
    finally:
        os.close(devnull)


class SocatProcess:
    """A running socat: reaped the moment it exits, killed with its group on stop.

    `adopt` takes a pid started by a previous envd (live upgrade): after the
    same-pid execve it is still our child, so the pidfd reaper works the same.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        command: str,
        on_exit: Callable[[SocatProcess], None] | None = None,
    ) -> None:
        self.loop = loop
        self.pid = pid
        self.command = command
        self.on_exit = on_exit
        self.exited = False
        self._pidfd = os.pidfd_open(pid)
        loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        # While socat is a zombie its pid (and group id) cannot be reused, so
        # the group is killed before the reap: forked connection handlers
        # must not outlive their listener, and after the reap the number
        # could belong to someone else's group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, -1  # reaped elsewhere (PID 1's reaper)
        if pid == 0:
            return  # not exited yet: a spurious wake-up
        self._close_pidfd()
        self.exited = True
        # Go's exec.Cmd.Wait error: nil for exit 0, which upstream does not log.
        error = "unknown" if status < 0 else from_wait_status(status).error
        if error is not None:
            log.debug(
                "Port forwarding socat process exited",
                extra={"socatCmd": self.command, "socatPid": self.pid, "error": error},
            )
        if self.on_exit is not None:
            self.on_exit(self)

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def kill(self) -> None:
        """SIGKILL socat's whole group; the reaper logs the exit."""
        if self.exited:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def detach(self) -> None:
        """Stop watching without killing (the next envd adopts the pid)."""
        self._close_pidfd()
