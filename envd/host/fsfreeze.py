"""FIFREEZE / FITHAW on a mounted file system (the orchestrator's `/fsfreeze`, `/fsthaw`).

Both ioctls can wait on the disk (a freeze syncs first), so they run in a
worker thread. Freezing an already frozen file system (`EBUSY`) and thawing a
thawed one (`EINVAL`) count as success, so either call may be repeated.
"""

from __future__ import annotations

import errno
import fcntl
import os

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


class FsFreezeError(Exception):
    pass


def _text(e: OSError) -> str:
    # Go's errno texts are the C library's, lower-cased.
    return e.strerror.lower() if e.strerror else str(e)


def _ioctl(mountpoint: str, request: int, name: str, benign: int) -> None:
    try:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise FsFreezeError(f"open {mountpoint}: {_text(e)}") from None
    try:
        fcntl.ioctl(fd, request, 0)
    except OSError as e:
        if e.errno != benign:
            raise FsFreezeError(f"{name} {mountpoint}: {_text(e)}") from None
    finally:
        os.close(fd)


def freeze(mountpoint: str) -> None:
    _ioctl(mountpoint, FIFREEZE, "FIFREEZE", errno.EBUSY)


def thaw(mountpoint: str) -> None:
    _ioctl(mountpoint, FITHAW, "FITHAW", errno.EINVAL)
