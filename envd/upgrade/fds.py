"""Descriptors that cross the execve, at upstream's fixed numbers.

Process i of the blob has its stdout, stderr, stdin and terminal master at
`FD_BASE + 5*i + 0..3` (slot +4 is unused), close-on-exec cleared; every other
descriptor of ours is close-on-exec (Python's default), so only these survive.
The incoming side moves each one off the slot range (and sets close-on-exec
again), so the next upgrade finds the slots free.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

FD_BASE = 200
SLOT_WIDTH = 5
STDOUT, STDERR, STDIN, TTY = range(4)


class FdError(Exception):
    pass


def slot(index: int, member: int) -> int:
    return FD_BASE + SLOT_WIDTH * index + member


def _in_use(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


class Relocation:
    """Descriptors duplicated onto their slots; `undo` closes them again."""

    def __init__(self) -> None:
        self.placed: list[int] = []

    def place(self, fd: int | None, target: int) -> int:
        """Duplicate `fd` onto `target` (inheritable); -1 when there is no fd."""
        if fd is None or fd < 0:
            return -1
        # dup2 would silently close whatever is there: that must abort instead.
        if _in_use(target):
            raise FdError(f"handover fd target {target} already in use")
        try:
            os.dup2(fd, target, inheritable=True)
        except OSError as e:
            raise FdError(f"dup3 {fd}->{target}: {e.strerror}") from None
        self.placed.append(target)
        return target

    def undo(self) -> None:
        for fd in self.placed:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.placed.clear()


def take(fd: int) -> int | None:
    """An inherited slot moved to a fresh close-on-exec descriptor; None for -1.

    OSError when the blob names a descriptor that did not cross the execve.
    """
    if fd < 0:
        return None
    try:
        fresh = os.dup(fd)  # non-inheritable
    except OSError as e:
        if e.errno == errno.EBADF:
            raise OSError(e.errno, f"handover fd {fd} is not open") from None
        return fd  # still usable where it is; only a later upgrade could collide
    os.close(fd)
    return fresh
