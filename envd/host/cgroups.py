"""cgroup v2 manager: `user`, `ptys` and `socats` under the root, and one cgroup per command.

Upstream puts every child into one of three cgroups so that the workload can
be frozen before a snapshot and kept below a memory ceiling; envd itself and
`_system` processes stay where envd runs. We add one cgroup per command below
`user`/`ptys` (runtime.md §7 names only the three): `cgroup.kill` then reaches
every descendant of a command, also those that left its process group.
Everything here is a cgroupfs file operation, which the kernel answers without
waiting on I/O, so the callers run it on the event loop except for the walks.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import itertools
import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

CGROUP2_SUPER_MAGIC = 0x63677270
MIB = 1 << 20
LINGER_FIRST_RETRY_S = 0.05
LINGER_MAX_RETRY_S = 10.0

USER = "user"
PTYS = "ptys"
SOCATS = "socats"
# The cgroups /freeze and /unfreeze always cover (socats is never frozen).
WORKLOAD = (USER, PTYS)
# Processes with this tag stay in envd's own cgroup, out of every freeze.
SYSTEM_TAG = "_system"


class Unobservable(Exception):
    """No cgroups are managed, so a freeze state cannot be read."""


class CgroupSetupError(Exception):
    pass


def memory_limit(meminfo: str) -> int:
    """`memory.max`/`memory.high` of the workload: keep 1/8 of RAM free, at most 128 MiB."""
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        if key == "MemTotal":
            total = int(rest.split()[0]) * 1024
            return total - min(total // 8, 128 * MIB)
    raise CgroupSetupError("no MemTotal in /proc/meminfo")


def cgroup_properties(memory: int) -> dict[str, dict[str, str]]:
    return {
        PTYS: {
            "cpu.weight": "200",
            "io.weight": "default 50",
            "memory.high": str(memory),
            "memory.max": str(memory),
        },
        SOCATS: {
            "cpu.weight": "150",
            "io.weight": "default 50",
            "memory.min": str(5 * MIB),
            "memory.low": str(8 * MIB),
        },
        USER: {
            "memory.high": str(memory),
            "memory.max": str(memory),
            "cpu.weight": "50",
            "io.weight": "default 10",
        },
    }


class _Statfs(ctypes.Structure):
    # Only f_type is read; the rest of struct statfs is room for the kernel to write.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def fs_type(path: str) -> int:
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(buf.f_type) & 0xFFFFFFFF


def write_prop(path: str, value: str) -> None:
    """Write a cgroupfs file without O_CREAT: a missing property must fail, not appear."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read_prop(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)


def frozen_from_events(text: str) -> bool:
    """The `frozen` field of cgroup.events: 1 only once every task has stopped."""
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "frozen":
            return value == "1"
    return False


@dataclass(eq=False)
class CommandCgroup:
    """The cgroup of one command; removed once the command and all it left behind are gone."""

    path: str

    def kill(self) -> bool:
        """SIGKILL every process in it; False where the kernel has no cgroup.kill (< 5.14)."""
        try:
            write_prop(os.path.join(self.path, "cgroup.kill"), "1")
        except OSError as e:
            log.debug("cgroup.kill in %s: %s", self.path, e)
            return False
        return True

    def remove(self) -> bool:
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # still populated (EBUSY): a descendant outlived the command
        return True


class Manager:
    """The no-op manager: children stay in envd's cgroup, freezing is unobservable."""

    root: str | None = None
    walkable = False

    def path_for(self, kind: str) -> str | None:
        """Where a kind's cgroup lives (`user`, `ptys`, `socats`); None without cgroups."""
        return None

    def command_cgroup(self, kind: str | None) -> CommandCgroup | None:
        return None

    def release(self, cgroup: CommandCgroup) -> None:
        pass

    def freeze(self, kind: str) -> None:
        pass

    def unfreeze(self, kind: str) -> None:
        pass

    def frozen(self, kind: str) -> bool:
        raise Unobservable("cgroup freeze state unobservable")

    # Path-addressed operations, only for walkable managers.
    def children_of(self, path: str) -> list[str]:
        raise NotImplementedError

    def freeze_at(self, path: str) -> None:
        raise NotImplementedError

    def unfreeze_at(self, path: str) -> None:
        raise NotImplementedError

    def frozen_at(self, path: str) -> bool:
        raise NotImplementedError

    def freeze_requested_at(self, path: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NoopManager(Manager):
    """What `-no-cgroups` and every set-up failure give."""


class Cgroup2Manager(Manager):
    walkable = True

    def __init__(self, root: str, paths: dict[str, str]) -> None:
        self.root = os.path.normpath(root)
        self._paths = paths
        self._seq = itertools.count(1)
        # Command cgroups whose command ended while something in them still ran.
        self._lingering: list[CommandCgroup] = []
        self._reap_timer: asyncio.TimerHandle | None = None

    def path_for(self, kind: str) -> str | None:
        return self._paths.get(kind)

    def command_cgroup(self, kind: str | None) -> CommandCgroup | None:
        """A fresh cgroup below `kind` for one command; None puts it in `kind` itself."""
        parent = self._paths.get(kind) if kind else None
        if parent is None:
            return None
        self._reap_lingering()
        for _ in range(1000):
            path = os.path.join(parent, f"cmd-{next(self._seq)}")
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                continue  # left over from an earlier envd
            except OSError as e:
                log.warning("creating command cgroup %s: %s", path, e)
                return None
            return CommandCgroup(path)
        return None

    def release(self, cgroup: CommandCgroup) -> None:
        """Remove a command's cgroup once empty: now, or retried until what it left is gone."""
        if not cgroup.remove():
            self._lingering.append(cgroup)
            self._schedule_reap(LINGER_FIRST_RETRY_S)
        self._reap_lingering()

    def _reap_lingering(self) -> None:
        if self._lingering:
            self._lingering = [c for c in self._lingering if not c.remove()]

    def _schedule_reap(self, delay: float) -> None:
        # Killed processes take a moment to leave; a daemon a command left
        # behind may stay for good, so the retries back off.
        if self._reap_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._reap_timer = loop.call_later(delay, self._timed_reap, delay)

    def _timed_reap(self, delay: float) -> None:
        self._reap_timer = None
        self._reap_lingering()
        if self._lingering:
            self._schedule_reap(min(delay * 2, LINGER_MAX_RETRY_S))

    def close(self) -> None:
        if self._reap_timer is not None:
            self._reap_timer.cancel()
            self._reap_timer = None

    def freeze(self, kind: str) -> None:
        self.freeze_at(self._path(kind))

    def unfreeze(self, kind: str) -> None:
        self.unfreeze_at(self._path(kind))

    def frozen(self, kind: str) -> bool:
        return self.frozen_at(self._path(kind))

    def _path(self, kind: str) -> str:
        path = self._paths.get(kind)
        if path is None:
            raise OSError(errno.ENOENT, f"unknown process type: {kind}")
        return path

    def children_of(self, path: str) -> list[str]:
        with os.scandir(path) as entries:
            return [os.path.join(path, e.name) for e in entries if e.is_dir(follow_symlinks=False)]

    def freeze_at(self, path: str) -> None:
        write_prop(os.path.join(path, "cgroup.freeze"), "1")

    def unfreeze_at(self, path: str) -> None:
        write_prop(os.path.join(path, "cgroup.freeze"), "0")

    def frozen_at(self, path: str) -> bool:
        return frozen_from_events(read_prop(os.path.join(path, "cgroup.events")))

    def freeze_requested_at(self, path: str) -> bool:
        # cgroup.freeze is this cgroup's own request; cgroup.events also reads
        # frozen when only an ancestor is.
        return read_prop(os.path.join(path, "cgroup.freeze")).strip() == "1"


def _create(path: str, properties: dict[str, str]) -> None:
    os.makedirs(path, 0o755, exist_ok=True)
    errors: list[str] = []
    for name, value in properties.items():
        try:
            write_prop(os.path.join(path, name), value)
        except (FileNotFoundError, PermissionError):
            # The controller is not enabled in the parent's subtree_control.
            print(f'cgroup property "{name}" unavailable at "{path}", skipping', file=sys.stderr)
        except OSError as e:
            errors.append(f'failed to write cgroup property "{name}": {e}')
    if errors:
        raise CgroupSetupError("; ".join(errors))


def create_cgroup2_manager(root: str, meminfo_path: str = "/proc/meminfo") -> Cgroup2Manager:
    try:
        kind = fs_type(root)
    except OSError as e:
        raise CgroupSetupError(f"failed to statfs cgroup root {root}: {e}") from None
    if kind != CGROUP2_SUPER_MAGIC:
        raise CgroupSetupError(f"cgroup root {root} is not a cgroup2 filesystem (type=0x{kind:x})")
    with open(meminfo_path) as f:
        memory = memory_limit(f.read())
    paths: dict[str, str] = {}
    errors: list[str] = []
    for name, properties in cgroup_properties(memory).items():
        path = os.path.join(os.path.normpath(root), name)
        try:
            _create(path, properties)
        except (CgroupSetupError, OSError) as e:
            errors.append(f"failed to create {name} cgroup: {e}")
            continue
        paths[name] = path
    if errors:
        raise CgroupSetupError("failed to create cgroups: " + "; ".join(errors))
    return Cgroup2Manager(root, paths)


def create_manager(no_cgroups: bool, root: str) -> Manager:
    """The daemon's manager; any set-up failure gives the no-op one (runtime.md §7)."""
    if no_cgroups:
        print("cgroups disabled via --no-cgroups; using no-op cgroup manager", file=sys.stderr)
        return NoopManager()
    try:
        return create_cgroup2_manager(root)
    except (CgroupSetupError, OSError, ValueError) as e:
        print(f"failed to create cgroup2 manager: {e}", file=sys.stderr)
        print("falling back to no-op cgroup manager", file=sys.stderr)
        return NoopManager()


def cgroup_kind(terminal: bool, tag: str | None) -> str | None:
    """Which cgroup a command belongs in; None keeps it in envd's own."""
    if tag == SYSTEM_TAG:
        return None
    return PTYS if terminal else USER
