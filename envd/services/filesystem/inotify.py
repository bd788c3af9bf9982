"""A thin inotify(7) and statfs(2) layer over libc, for watchers on the event loop.

We call the three inotify syscalls through ctypes and parse the event records
ourselves: the whole surface is ~60 lines, needs no dependency, and gives us
the non-blocking fd that `loop.add_reader` wants (see the README's dependency
table for the PyPI wrappers we compared).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# What upstream's fsnotify fork asks for on every watch.
WATCH_MASK = (
    IN_CREATE
    | IN_MODIFY
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_MOVE_SELF
    | IN_ATTRIB
)

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


def _check(result: int, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return result


@dataclass(slots=True)
class RawEvent:
    wd: int
    mask: int
    cookie: int
    name: str  # file-system encoding with surrogate escapes, as os.listdir gives


def inotify_init() -> int:
    """A new non-blocking, close-on-exec inotify instance fd."""
    return _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))


def add_watch(fd: int, path: str, mask: int) -> int:
    return _check(_libc.inotify_add_watch(fd, os.fsencode(path), mask), path)


def rm_watch(fd: int, wd: int) -> None:
    # EINVAL: the kernel already dropped the watch (its IN_IGNORED is queued).
    _libc.inotify_rm_watch(fd, wd)


def parse_events(data: bytes) -> list[RawEvent]:
    events = []
    offset = 0
    size = _HEADER.size
    end = len(data)
    while offset + size <= end:
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += size
        name = data[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        events.append(RawEvent(wd, mask, cookie, os.fsdecode(name)))
    return events


class _Statfs(ctypes.Structure):
    # struct statfs on 64-bit Linux: f_type comes first; the rest is never read.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]


_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]

NETWORK_FS_MAGIC = {
    0x6969,  # NFS
    0xFF534D42,  # CIFS
    0x517B,  # SMB
    0xFE534D42,  # SMB2
    0x65735546,  # FUSE
}


def statfs_type(path: str) -> int:
    """`f_type` of the filesystem holding `path` (following symlinks)."""
    buf = _Statfs()
    _check(_libc.statfs(os.fsencode(path), ctypes.byref(buf)), path)
    return int(buf.f_type) & 0xFFFFFFFF
