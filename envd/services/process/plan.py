"""What a child is to become, as data: the spawners' common input and error texts.

Upstream never execs the command directly: `/bin/sh` first lowers the child's
OOM protection and priorities, then `exec`s it, so the pid we report is the
command's own. The environment is built from scratch, and the child changes
directory only after dropping privileges, so an unenterable cwd is a spawn
error, as with Go's fork/exec.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

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


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything about the child except its fds.

    `cgroup` is a cgroup v2 directory the child joins (through its
    `cgroup.procs`) while still root, before it drops privileges and before
    exec, so nothing it starts is ever outside; None leaves it in envd's.
    """

    command: list[str]  # [cmd, *args] as requested
    env: list[str]  # KEY=value, already deduplicated
    creds: Credentials
    cwd: str
    terminal: bool
    cgroup: str | None = None
    env_map: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        env_map = dict(entry.partition("=")[::2] for entry in self.env)
        object.__setattr__(self, "env_map", env_map)


class SpawnError(Exception):
    """The child could not be started; the text is what Go's exec.Cmd.Start reports."""


def go_errno_text(code: int) -> str:
    """Go's syscall.Errno strings are the C library's, lower-cased."""
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


def check_nul(argv: Sequence[str], env: Sequence[str], cwd: str) -> None:
    """NUL cannot cross execve; Go refuses it before forking, with these texts."""
    if any("\0" in entry for entry in env):
        raise SpawnError("exec: environment variable contains NUL")
    if any("\0" in arg for arg in argv) or "\0" in cwd:
        raise SpawnError(f"fork/exec {SHELL}: {go_errno_text(errno.EINVAL)}")


_found: dict[str, str] = {}


def _helper(name: str) -> str | None:
    # Upstream looks both up on every Start (a PATH scan, ~0.5 ms each here);
    # one found stays valid while it is still executable there.
    path = _found.get(name)
    if path is not None and os.access(path, os.X_OK):
        return path
    path = shutil.which(name, path=ENVD_PATH)
    if path is None:
        _found.pop(name, None)
    else:
        _found[name] = path
    return path


def priority_helpers() -> tuple[str | None, str | None]:
    """The image's ionice and nice, each None if it lacks them (minimal images do)."""
    return _helper("ionice"), _helper("nice")


def nice_delta() -> int:
    """Upstream's `nice -n` argument: from envd's own nice value back to NICE."""
    return NICE - os.getpriority(os.PRIO_PROCESS, 0)


def _priority_prefix() -> list[str]:
    """ionice/nice, each only if the image has it."""
    ionice, nice = priority_helpers()
    prefix: list[str] = []
    if ionice:
        prefix += [ionice, "-c", str(IO_CLASS), "-n", str(IO_LEVEL)]
    if nice:
        prefix += [nice, "-n", str(nice_delta())]
    return prefix


def wrapper_script() -> str:
    prefix = "".join(f"{part} " for part in _priority_prefix())
    return f'echo {OOM_SCORE_ADJ} > /proc/$$/oom_score_adj && exec {prefix}"${{@}}"'


def wrapper_argv(cmd: str, args: Sequence[str]) -> list[str]:
    """`/bin/sh -c '<script>' -- cmd args...`: `$0` is `--`, `"$@"` the user's argv."""
    return [SHELL, "-c", wrapper_script(), "--", cmd, *args]
