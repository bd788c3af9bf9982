"""`EntryInfo` for a path, exactly as upstream builds it (spec filesystem.md §4).

Shared by the Connect service and the plain HTTP `/files` routes: nothing here
knows about a request. Every function blocks on the filesystem; async callers
run them in a worker thread (one thread call per operation, not per entry).
"""

from __future__ import annotations

import errno
import functools
import os
import stat

from envd.gen.filesystem import filesystem_pb2
from envd.permissions.users import name_for_gid, name_for_uid

EntryInfo = filesystem_pb2.EntryInfo

METADATA_PREFIX = "user.e2b."

# Go's FileMode.String(): one letter per type/special flag in this order, then rwx.
# `a`, `l`, `T` and `?` never occur on Linux, so they are left out.
_PERM_CHARS = "rwxrwxrwx"


@functools.lru_cache(maxsize=256)
def go_mode_string(st_mode: int) -> str:
    """The permission string Go prints (`dtrwxrwxrwx`, `Lrwxrwxrwx`, `Dcrw-rw-rw-`)."""
    fmt = stat.S_IFMT(st_mode)
    flags = []
    if fmt == stat.S_IFDIR:
        flags.append("d")
    if fmt == stat.S_IFLNK:
        flags.append("L")
    if fmt in (stat.S_IFBLK, stat.S_IFCHR):
        flags.append("D")
    if fmt == stat.S_IFIFO:
        flags.append("p")
    if fmt == stat.S_IFSOCK:
        flags.append("S")
    if st_mode & stat.S_ISUID:
        flags.append("u")
    if st_mode & stat.S_ISGID:
        flags.append("g")
    if fmt == stat.S_IFCHR:
        flags.append("c")
    if st_mode & stat.S_ISVTX:
        flags.append("t")
    perms = "".join(c if st_mode & (1 << (8 - i)) else "-" for i, c in enumerate(_PERM_CHARS))
    return ("".join(flags) or "-") + perms


def file_type(st_mode: int) -> filesystem_pb2.FileType:
    if stat.S_ISREG(st_mode):
        return filesystem_pb2.FILE_TYPE_FILE
    if stat.S_ISDIR(st_mode):
        return filesystem_pb2.FILE_TYPE_DIRECTORY
    return filesystem_pb2.FILE_TYPE_UNSPECIFIED


def base_name(path: str) -> str:
    """Go's `filepath.Base` as `Lstat` names a file: trailing slashes ignored, `/` for root."""
    stripped = path.rstrip("/")
    if not stripped:
        return "/" if path else "."
    return stripped.rsplit("/", 1)[-1]


class IdNames:
    """uid/gid → name, cached for the life of one operation (a ListDir of
    10 000 entries must not re-read /etc/passwd 20 000 times)."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            name = self._users[uid] = name_for_uid(uid) or str(uid)
        return name

    def group(self, gid: int) -> str:
        name = self._groups.get(gid)
        if name is None:
            name = self._groups[gid] = name_for_gid(gid) or str(gid)
        return name


def read_metadata(path: str) -> dict[str, str]:
    """`user.e2b.*` xattrs (following symlinks), prefix stripped; best effort.

    Keys or values that are not UTF-8 are skipped; any listing or read failure
    gives an empty map, never an error (upstream ignores it too).
    """
    try:
        names = os.listxattr(path)
    except OSError:
        return {}
    metadata: dict[str, str] = {}
    for name in names:
        if not name.startswith(METADATA_PREFIX):
            continue
        key = name[len(METADATA_PREFIX) :]
        try:
            key.encode("utf-8")
            value = os.getxattr(path, name).decode("utf-8")
        except OSError as e:
            if e.errno == errno.ENODATA:
                continue
            return {}
        except UnicodeError:
            continue
        metadata[key] = value
    return metadata


def _symlink_target(path: str) -> str:
    """Fully resolved target, or the link's own path when it cannot be resolved."""
    try:
        return os.path.realpath(path, strict=True)
    except (OSError, RuntimeError):
        return path


def entry_info(path: str, names: IdNames | None = None) -> EntryInfo:
    """EntryInfo of `path` (not following a final symlink), `path` echoed as given.

    Raises the `OSError` of `lstat(path)` (errno and filename set); callers word
    it (`file not found: lstat <path>: ...`).
    """
    st = os.lstat(path)
    names = names or IdNames()
    info = EntryInfo(
        name=base_name(path),
        path=path,
        size=st.st_size,
        permissions=go_mode_string(st.st_mode),
        owner=names.user(st.st_uid),
        group=names.group(st.st_gid),
    )
    if stat.S_ISLNK(st.st_mode):
        # A link reports its target's type and permission bits but its own
        # size, mtime and permission string; FILE_TYPE_SYMLINK is never sent
        # (docs/compatibility.md explains why `is_symlink` stays unset too).
        target = _symlink_target(path)
        info.symlink_target = target
        try:
            target_mode = os.stat(target).st_mode
        except OSError:
            info.type = filesystem_pb2.FILE_TYPE_UNSPECIFIED
        else:
            info.type = file_type(target_mode)
            info.mode = target_mode & 0o777
    else:
        info.type = file_type(st.st_mode)
        info.mode = st.st_mode & 0o777
    if st.st_mtime_ns:
        info.modified_time.FromNanoseconds(st.st_mtime_ns)
    metadata = read_metadata(path)
    if metadata:
        info.metadata.update(metadata)
    return info
