"""A file assembled out of sight, then put at its name in one step.

The content goes into an anonymous `O_TMPFILE` inode in the destination's
directory (nothing to clean up after a crash) or, where the file system
lacks it, a hidden sibling; `install` then links a new name (a new file
appears complete) or renames over the old one (a reader sees old or new,
never a mix). Used by compose; blocking, callers use a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass

# Errors that mean "this directory cannot hold an anonymous inode" rather
# than "this directory cannot hold a file".
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT, errno.EXDEV)


@dataclass(slots=True)
class TempFile:
    fd: int
    # The hidden sibling's name while it has one (always, for the fallback;
    # for an anonymous inode only between `install`'s link and rename).
    name: str | None
    anonymous: bool


def create(directory: str, fallback_name: str) -> TempFile:
    """A writable inode in `directory`: anonymous if possible, else `fallback_name`
    (created exclusively). Raises the `OSError` of the open (`fallback_name`'s,
    if it came to that)."""
    try:
        fd = os.open(directory or "/", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno not in _NO_TMPFILE:
            raise
    else:
        return TempFile(fd, None, anonymous=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    return TempFile(os.open(fallback_name, flags, 0o666), fallback_name, anonymous=False)


def _link_fd(fd: int, dest: str) -> None:
    # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N names an O_TMPFILE inode;
    # Python passes that flag only when given a directory fd (which the
    # absolute source path then ignores).
    dir_fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", dest, src_dir_fd=dir_fd, follow_symlinks=True)
    finally:
        os.close(dir_fd)


def link_new(temp: TempFile, dest: str) -> bool:
    """Gives an anonymous inode the name `dest` if nothing has it. False when
    `dest` exists (or the inode is not anonymous): `replace` it instead.
    Raises the `OSError` of the link."""
    if not temp.anonymous:
        return False
    try:
        _link_fd(temp.fd, dest)
    except FileExistsError:
        return False
    return True


def replace(temp: TempFile, dest: str, link_name: str) -> None:
    """Renames the inode over `dest`. An anonymous inode is first linked at
    `link_name` (a sibling of `dest`) for the instant of the rename. Raises
    the `OSError` of the link or the rename; the temporary name is gone either
    way once the rename has failed."""
    if temp.name is None:
        _link_fd(temp.fd, link_name)
        temp.name = link_name
    try:
        os.rename(temp.name, dest)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp.name)
        temp.name = None
        raise
    temp.name = None


def close(temp: TempFile) -> None:
    """Closes the fd (once); raises the `OSError` of the close."""
    fd, temp.fd = temp.fd, -1
    if fd >= 0:
        os.close(fd)


def discard(temp: TempFile) -> None:
    """Drops an inode that was not installed: fd closed, any name unlinked."""
    with contextlib.suppress(OSError):
        close(temp)
    if temp.name is not None:
        with contextlib.suppress(OSError):
            os.unlink(temp.name)
        temp.name = None
