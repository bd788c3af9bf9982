"""The ways a child can be started, and the one place that picks among them.

Every spawner gets the same `Plan` and the child's ends of its stdio, and
leaves the child exactly as upstream's wrapper does (see `launch`). Each one
returns only once the child has either exec'd or failed, with the failure as
Go's fork/exec text (`SpawnError`); the caller owns reaping the pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import termios
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from envd.services.process.plan import (
    ENVD_PATH,
    SHELL,
    Plan,
    SpawnError,
    check_nul,
    go_errno_text,
    wrapper_script,
)


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


# --- posix_spawn through setpriv ------------------------------------------

# posix_spawn (vfork+exec, about 0.1 ms on the event loop) needs a helper to
# change user: Python's fork with setuid/setgroups holds the GIL for the ~2 ms
# of copying the daemon's page tables, which stalled every other request
# during a burst of Starts. util-linux's setpriv is on every Debian/Ubuntu/RHEL
# image; without it we fall back to Popen.
SETPRIV = shutil.which("setpriv", path=ENVD_PATH)


def _same_ids(plan: Plan) -> bool:
    creds = plan.creds
    return (
        creds.uid == os.getuid() == os.geteuid()
        and creds.gid == os.getgid() == os.getegid()
        and sorted(set(creds.groups)) == sorted(set(os.getgroups()))
    )


class PosixSpawner:
    """Non-terminal children without a cgroup: `setpriv` → `/bin/sh` → upstream's wrapper.

    The shell changes directory as the user, as Go's fork/exec does after
    setuid, and writes `0` (entered) or an errno to fd 3 before running the
    wrapper; that report is read before the process counts as started. It
    cannot join a cgroup before dropping privileges (setpriv runs first), so
    `choose_spawner` never gives it a plan with one.
    """

    name = "posix_spawn"

    async def spawn(self, loop: asyncio.AbstractEventLoop, plan: Plan, stdio: Stdio) -> int:
        pid, report = _posix_spawn(plan, stdio)
        failed = read_report(await _read_to_end(loop, report))
        if failed is not None:
            # The shell exits right after reporting.
            await asyncio.to_thread(os.waitpid, pid, 0)
            raise SpawnError(f"fork/exec {SHELL}: {go_errno_text(failed)}")
        return pid


def _posix_spawn(plan: Plan, stdio: Stdio) -> tuple[int, int]:
    """The child, and the read end of its cwd report."""
    argv = [SHELL, "-c", _cd_script(plan.env_map, plan.cwd) + wrapper_script()]
    argv += ["--", plan.cwd, *plan.command]
    check_nul(argv, plan.env, plan.cwd)
    if not os.path.isdir(plan.cwd):
        # As root the answer cannot depend on the user: chdir would fail the same.
        raise SpawnError(f"fork/exec {SHELL}: {go_errno_text(errno.ENOTDIR)}")
    if not _same_ids(plan):
        creds = plan.creds
        groups = ",".join(str(g) for g in creds.groups)
        assert SETPRIV is not None  # choose_spawner checked
        argv = [
            SETPRIV,
            f"--reuid={creds.uid}",
            f"--regid={creds.gid}",
            f"--groups={groups}" if groups else "--clear-groups",
            "--",
            *argv,
        ]
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            plan.env_map,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdio.stdin, 0),
                (os.POSIX_SPAWN_DUP2, stdio.stdout, 1),
                (os.POSIX_SPAWN_DUP2, stdio.stderr, 2),
                (os.POSIX_SPAWN_DUP2, report_w, 3),
            ],
            setpgroup=0,
            # What Popen's restore_signals does: Python ignores SIGPIPE and SIGXFSZ,
            # and an ignored signal stays ignored across exec.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            setsigmask=(),
        )
    except OSError as e:
        os.close(report_r)
        raise SpawnError(f"fork/exec {SHELL}: {go_errno_text(e.errno or errno.EIO)}") from e
    finally:
        os.close(report_w)
    return pid, report_r


def _cd_script(env: Mapping[str, str], cwd: str) -> str:
    """Enter cwd as the user, report on fd 3, and leave PWD/OLDPWD as a shell started there would.

    Upstream's shell starts in the directory, so it exports PWD (the given
    value when it names that directory, else the physical path) and no
    OLDPWD; `cd` would add OLDPWD and pick its own PWD.
    """
    lines = [
        f'cd -P -- "$1" 2>/dev/null || {{ echo {errno.EACCES} >&3; exit 126; }}',
        "echo 0 >&3; exec 3>&-; shift",
        f"OLDPWD={shlex.quote(env['OLDPWD'])}" if "OLDPWD" in env else "unset OLDPWD",
    ]
    given = env.get("PWD")
    if given and os.path.isabs(given):
        with contextlib.suppress(OSError):
            if os.path.samefile(given, cwd):
                lines.append(f"PWD={shlex.quote(given)}")
    return "; ".join(lines) + "; "


def read_report(data: bytes) -> int | None:
    """The errno the child reported for its cwd, None when it entered it."""
    text = data.strip()
    if text == b"0":
        return None
    try:
        return int(text) or errno.EIO
    except ValueError:
        # No report at all: setpriv or the shell failed before the script ran.
        return errno.EPERM


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


# --- Popen in a worker thread ---------------------------------------------


class PopenSpawner:
    """Everything else: `Popen` of upstream's `/bin/sh` wrapper, in a worker thread.

    Popen forks the whole daemon and waits until the child has exec'd, so it
    runs off the event loop. Terminal children lead a new session with the
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
            raise SpawnError(f"fork/exec {SHELL}: {go_errno_text(code)}") from None
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

POSIX_SPAWN = PosixSpawner()
POPEN = PopenSpawner()


def choose_spawner(plan: Plan) -> Spawner:
    """The cheapest spawner that can do everything this plan asks for."""
    if plan.terminal or plan.cgroup is not None:
        return POPEN
    if SETPRIV is None and not _same_ids(plan):
        return POPEN
    return POSIX_SPAWN
