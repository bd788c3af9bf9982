"""How a requested command becomes a child process: wrapper, environment, credentials, spawn.

Upstream never execs the command directly: `/bin/sh` first lowers the child's
OOM protection and priorities, then `exec`s it, so the pid we report is the
command's own. The environment is built from scratch, and the child changes
directory only after dropping privileges, so an unenterable cwd is a spawn
error, as with Go's fork/exec.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import termios
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.execcontext import ExecContext
from envd.fs.errors import errno_text as go_errno_text
from envd.permissions.paths import PathError, expand_and_resolve
from envd.permissions.users import User, supplementary_groups

SHELL = "/bin/sh"
OOM_SCORE_ADJ = 100
IO_CLASS = 2  # best-effort
IO_LEVEL = 4
NICE = 0

# The PATH envd was started with is the only variable children inherit.
ENVD_PATH = os.environ.get("PATH", "")


@dataclass(frozen=True, slots=True)
class Credentials:
    uid: int
    gid: int
    groups: list[int]


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


def _priority_prefix() -> list[str]:
    """ionice/nice, each only if the image has it (minimal images lack them)."""
    prefix: list[str] = []
    if ionice := shutil.which("ionice", path=ENVD_PATH):
        prefix += [ionice, "-c", str(IO_CLASS), "-n", str(IO_LEVEL)]
    if nice := shutil.which("nice", path=ENVD_PATH):
        prefix += [nice, "-n", str(NICE - os.getpriority(os.PRIO_PROCESS, 0))]
    return prefix


def wrapper_argv(cmd: str, args: Sequence[str]) -> list[str]:
    """`/bin/sh -c '<script>' -- cmd args...`: `$0` is `--`, `"$@"` the user's argv."""
    return [SHELL, "-c", _wrapper_script(), "--", cmd, *args]


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


class SpawnError(Exception):
    """The child could not be started; the text is what Go's exec.Cmd.Start reports."""


def check_nul(argv: Sequence[str], env: Sequence[str], cwd: str) -> None:
    """NUL cannot cross execve; Go refuses it before forking, with these texts."""
    if any("\0" in entry for entry in env):
        raise SpawnError("exec: environment variable contains NUL")
    if any("\0" in arg for arg in argv) or "\0" in cwd:
        raise SpawnError(f"fork/exec {SHELL}: {go_errno_text(errno.EINVAL)}")


@dataclass(slots=True)
class Stdio:
    stdin: int
    stdout: int
    stderr: int


def spawn(
    argv: list[str],
    env: list[str],
    creds: Credentials,
    cwd: str,
    stdio: Stdio,
    *,
    terminal: bool,
) -> int:
    """Start the child and return its pid; the caller owns reaping it.

    Non-terminal children get their own process group so that signals can
    reach everything they start; terminal children lead a new session with the
    terminal as controlling tty.
    """
    check_nul(argv, env, cwd)
    env_map = dict(entry.partition("=")[::2] for entry in env)

    # Changing directory as root is the same before or after setuid, and a
    # child without Python code in it is safer (no preexec_fn) and faster.
    if not terminal and creds.uid == 0:
        return _popen(argv, env_map, creds, stdio, terminal=False, cwd=cwd)

    # The child reports a failed setup step's errno here, as Go's fork/exec
    # does; close-on-exec, so a successful exec leaves it empty.
    report_r, report_w = os.pipe2(os.O_CLOEXEC)

    def child_setup() -> None:  # runs in the child, after setgroups/setgid/setuid
        try:
            if terminal:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            os.chdir(cwd)
        except OSError as e:
            os.write(report_w, (e.errno or errno.EIO).to_bytes(4, "little"))
            raise

    try:
        return _popen(argv, env_map, creds, stdio, terminal=terminal, setup=child_setup)
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


# posix_spawn (vfork+exec, about 0.1 ms on the event loop) needs a helper to
# change user: Python's fork with setuid/setgroups holds the GIL for the ~2 ms
# of copying the daemon's page tables, which stalled every other request
# during a burst of Starts. util-linux's setpriv is on every Debian/Ubuntu/RHEL
# image; without it we fall back to Popen.
SETPRIV = shutil.which("setpriv", path=ENVD_PATH)


@dataclass(slots=True)
class Spawned:
    """A child started by `posix_spawn_process`; `report` says whether its cwd worked."""

    pid: int
    report: int


def posix_spawn_process(
    command: Sequence[str],
    env: list[str],
    creds: Credentials,
    cwd: str,
    stdio: Stdio,
) -> Spawned | None:
    """Start a non-terminal child without forking the daemon; None where we cannot.

    The child is `setpriv` (to the user) → `/bin/sh` → upstream's wrapper. The
    shell changes directory as the user, as Go's fork/exec does after setuid,
    and writes `0` (entered) or an errno to fd 3 before running the wrapper;
    the caller reads that from `report` (see `read_report`) before the
    process counts as started.
    """
    check_nul(command, env, cwd)
    same_ids = (
        creds.uid == os.getuid() == os.geteuid()
        and creds.gid == os.getgid() == os.getegid()
        and sorted(set(creds.groups)) == sorted(set(os.getgroups()))
    )
    if not same_ids and SETPRIV is None:
        return None
    if not os.path.isdir(cwd):
        # As root the answer cannot depend on the user: chdir would fail the same.
        raise SpawnError(f"fork/exec {SHELL}: {go_errno_text(errno.ENOTDIR)}")
    env_map = dict(entry.partition("=")[::2] for entry in env)
    argv = [SHELL, "-c", _cd_script(env_map, cwd) + _wrapper_script(), "--", cwd, *command]
    if not same_ids:
        groups = ",".join(str(g) for g in creds.groups)
        argv = [
            SETPRIV,  # type: ignore[list-item]  # checked above
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
            env_map,
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
    return Spawned(pid, report_r)


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


def _wrapper_script() -> str:
    prefix = "".join(f"{part} " for part in _priority_prefix())
    return f'echo {OOM_SCORE_ADJ} > /proc/$$/oom_score_adj && exec {prefix}"${{@}}"'


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


def _popen(
    argv: list[str],
    env: dict[str, str],
    creds: Credentials,
    stdio: Stdio,
    *,
    terminal: bool,
    cwd: str | None = None,
    setup: Callable[[], None] | None = None,
) -> int:
    try:
        # preexec_fn is only given for the two steps Popen cannot do itself
        # (controlling tty, chdir after setuid); it calls C functions only,
        # which stay safe in a forked child even with other threads around.
        popen = subprocess.Popen(
            argv,
            stdin=stdio.stdin,
            stdout=stdio.stdout,
            stderr=stdio.stderr,
            env=env,
            cwd=cwd,
            close_fds=True,
            user=creds.uid,
            group=creds.gid,
            extra_groups=creds.groups,
            start_new_session=terminal,
            process_group=None if terminal else 0,
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
