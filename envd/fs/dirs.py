"""Implicit directory creation owned by the requesting user (spec filesystem.md §5).

MakeDir, Move, upload and compose all create missing parents the same way:
each missing level is made with mode 0755 and chowned to the user; existing
directories are left alone. Blocking: async callers use a worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable

from envd.fs.errors import path_error
from envd.permissions.paths import go_dir
from envd.permissions.users import User

log = logging.getLogger("envd.fs.dirs")

# Called with each directory `ensure_dirs` created, in the creating thread,
# before anything is put inside it: a recursive watcher adds its watch there
# and then, so the files an upload or a MakeDir puts into a new directory are
# all reported (a watch added later, after its IN_CREATE is read, would miss
# them). Listeners must be quick and thread-safe.
DirCreated = Callable[[str], None]
_listeners: set[DirCreated] = set()
_listeners_lock = threading.Lock()


def add_dir_listener(listener: DirCreated) -> None:
    with _listeners_lock:
        _listeners.add(listener)


def remove_dir_listener(listener: DirCreated) -> None:
    with _listeners_lock:
        _listeners.discard(listener)


def _announce(path: str) -> None:
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(path)
        except Exception:  # a watcher's trouble must not fail the caller's mkdir
            log.exception("directory listener failed for %s", path)


class EnsureDirsError(Exception):
    """Message is upstream's text (`path is a file: /a`, `failed to chown directory: ...`)."""


class UserIdError(Exception):
    """uid/gid in passwd that is not a decimal integer; message is upstream's."""


def user_ids(user: User) -> tuple[int, int]:
    """Numeric uid and gid of a passwd record (upstream's `GetUserIdInts`)."""
    ids = []
    for kind, value in (("uid", user.uid), ("gid", user.gid)):
        try:
            ids.append(int(value, 10))
        except ValueError:
            raise UserIdError(
                f"error parsing {kind} '{value}': "
                f'strconv.ParseInt: parsing "{value}": invalid syntax'
            ) from None
    return ids[0], ids[1]


def _levels(path: str) -> list[str]:
    """`path`, its lexical parent, ... down to (not including) `/`, top first."""
    levels = []
    while True:
        levels.append(path)
        path = go_dir(path)
        if path == "/" or path == levels[-1]:
            break
    levels.reverse()
    return levels


def ensure_dirs(path: str, uid: int, gid: int) -> None:
    """Create `path` and its missing ancestors (0755 before umask, owned by uid:gid).

    `path` must be absolute. Directories created before a failure stay (as
    upstream). Raises `EnsureDirsError`.
    """
    for level in _levels(path):
        try:
            st = os.stat(level)
        except FileNotFoundError:
            pass
        except OSError as e:
            message = f"failed to stat directory: {path_error('stat', level, e)}"
            raise EnsureDirsError(message) from e
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise EnsureDirsError(f"path is a file: {level}")
            continue
        try:
            os.mkdir(level, 0o755)
        except OSError as e:
            # Lost a race with another creator: still chown it, as upstream does.
            if e.errno != errno.EEXIST:
                raise EnsureDirsError(
                    f"failed to create directory: {path_error('mkdir', level, e)}"
                ) from e
        try:
            os.chown(level, uid, gid)
        except OSError as e:
            raise EnsureDirsError(
                f"failed to chown directory: {path_error('chown', level, e)}"
            ) from e
        _announce(level)
