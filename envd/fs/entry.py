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
from typing import cast

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
    10 000 entries must not re-read /etc/passwd 20 000 times).

    Only names that can travel (UTF-8) are cached; `users`/`groups` are read
    directly on the hot path.
    """

    def __init__(self) -> None:
        self.users: dict[int, str] = {}
        self.groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        name = self.users.get(uid)
        if name is None:
            name = self.users[uid] = _utf8(name_for_uid(uid) or str(uid))
        return name

    def group(self, gid: int) -> str:
        name = self.groups.get(gid)
        if name is None:
            name = self.groups[gid] = _utf8(name_for_gid(gid) or str(gid))
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
    return _metadata(path, names)


def _metadata(path: str, names: list[str]) -> dict[str, str]:
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


# What an EntryInfo carries, before it becomes a message or wire bytes:
# (name, type, path, size, mode, permissions, owner, group, modified_ns,
# symlink_target, metadata), in field-number order. A plain tuple, because a
# NamedTuple costs ~0.8 µs more per entry of a 10 000-entry ListDir.
# `modified_ns` 0 means unset (as upstream, for a zero mtime). Every string is
# valid UTF-8 and `modified_ns` within Timestamp's range (`entry_fields`
# checks both), so no encoding of it can fail.
Fields = tuple[str, int, str, int, int, str, str, str, int, str | None, dict[str, str]]


def _utf8(text: str) -> str:
    # A proto3 string must be UTF-8: a lone surrogate (a non-UTF-8 file name
    # decoded by the os module) raises UnicodeEncodeError, a ValueError.
    if not text.isascii():
        text.encode()
    return text


# Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_NS_MIN = -62135596800 * 1_000_000_000
TIMESTAMP_NS_MAX = 253402300799 * 1_000_000_000 + 999_999_999


# (type, permission bits, permission string) by a non-link's st_mode: a
# dict read is cheaper than three calls per entry.
_MODE_FIELDS: dict[int, tuple[int, int, str]] = {}


def _mode_fields(st_mode: int) -> tuple[int, int, str]:
    fields = _MODE_FIELDS.get(st_mode)
    if fields is None:
        if len(_MODE_FIELDS) >= 4096:  # only a few dozen modes ever occur
            _MODE_FIELDS.clear()
        fields = _MODE_FIELDS[st_mode] = (
            file_type(st_mode),
            st_mode & 0o777,
            go_mode_string(st_mode),
        )
    return fields


def entry_fields(
    path: str, names: IdNames, name: str | None = None, shown: str | None = None
) -> Fields:
    """The fields of `path`'s EntryInfo (not following a final symlink).

    `name` and `shown` (the path reported) default to `path`'s base name and
    `path` itself; `path` must be UTF-8 even when another path is shown. One
    lstat (plus the target's stat for a link) and one listxattr: ListDir calls
    this per entry, so it is written for speed. Raises the `OSError` of
    `lstat(path)` (errno and filename set), which callers word (`file not
    found: lstat <path>: ...`), or ValueError for what a message cannot carry
    (a name that is not UTF-8, a year past 9999).
    """
    st = os.lstat(path)
    st_mode = st.st_mode
    target: str | None = None
    kind: int
    if st_mode & 0o170000 == stat.S_IFLNK:
        # A link reports its target's type and permission bits but its own
        # size, mtime and permission string; FILE_TYPE_SYMLINK is never sent
        # (docs/compatibility.md explains why `is_symlink` stays unset too).
        target = _utf8(_symlink_target(path))
        try:
            target_mode = os.stat(target).st_mode
        except OSError:
            kind, mode = filesystem_pb2.FILE_TYPE_UNSPECIFIED, 0
        else:
            kind, mode = file_type(target_mode), target_mode & 0o777
        permissions = go_mode_string(st_mode)
    else:
        kind, mode, permissions = _MODE_FIELDS.get(st_mode) or _mode_fields(st_mode)
    modified_ns = st.st_mtime_ns
    if not TIMESTAMP_NS_MIN <= modified_ns <= TIMESTAMP_NS_MAX:
        raise ValueError(f"Timestamp is not valid: {modified_ns} ns is out of range")
    if name is None:
        name = base_name(path)
    if shown is None:
        shown = path
    # A proto3 string must be UTF-8: a lone surrogate (a name that is not
    # UTF-8, decoded by the os module) raises UnicodeEncodeError, a ValueError.
    if not (name.isascii() and path.isascii() and shown.isascii()):
        name.encode(), path.encode(), shown.encode()
    try:
        xattrs = os.listxattr(path)
    except OSError:
        xattrs = None
    return (
        name,
        kind,
        shown,
        st.st_size,
        mode,
        permissions,
        names.users.get(st.st_uid) or names.user(st.st_uid),
        names.groups.get(st.st_gid) or names.group(st.st_gid),
        modified_ns,
        target,
        _metadata(path, xattrs) if xattrs else {},
    )


def to_message(fields: Fields) -> EntryInfo:
    (name, kind, path, size, mode, permissions, owner, group, ns, target, metadata) = fields
    info = EntryInfo(
        name=name,
        type=cast(filesystem_pb2.FileType, kind),
        path=path,
        size=size,
        mode=mode,
        permissions=permissions,
        owner=owner,
        group=group,
        symlink_target=target,
    )
    if ns:
        info.modified_time.FromNanoseconds(ns)
    if metadata:
        info.metadata.update(metadata)
    return info


def entry_info(path: str, names: IdNames | None = None) -> EntryInfo:
    """EntryInfo of `path` (not following a final symlink), `path` echoed as given.

    Raises as `entry_fields` does.
    """
    return to_message(entry_fields(path, names or IdNames()))
