"""Output a process wrote while nobody was subscribed, kept for the next subscriber.

Upstream discards such output. We keep a bounded tail of it per process and
output member (stdout, stderr, pty), under one budget for the whole daemon:
the next `Connect` receives it first, as ordinary data events, and then the
live output. Once handed to a subscriber it is gone, so nothing is ever
delivered twice.

Bounds: each member of a process keeps at most `per_stream` bytes (its oldest
bytes are dropped first), and all backlogs together at most `total` bytes (the
oldest pieces daemon-wide are dropped first). When bytes are cut from the front
of a piece, the cut moves past any UTF-8 continuation bytes, so a piece never
starts inside a character (old SDKs decode each chunk on its own).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

DEFAULT_PER_STREAM: Final = 1 << 20
DEFAULT_TOTAL: Final = 64 << 20
# Small reads of one member are joined into pieces of up to this size, so a
# chatty process costs bytes, not thousands of objects.
_JOIN_LIMIT: Final = 32 << 10
# Freed backlog memory stays in the C allocator's arenas; after this much has
# been released it is handed back to the kernel (the VM's memory is the host's).
_TRIM_AFTER: Final = 8 << 20


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        return None
    return trim


def utf8_start(data: bytes, cut: int) -> int:
    """The first index ≥ `cut` that does not fall inside a UTF-8 sequence."""
    end = min(len(data), cut + 3)
    while cut < end and (data[cut] & 0xC0) == 0x80:
        cut += 1
    return cut


@dataclass(slots=True, eq=False)
class _Piece:
    owner: Backlog
    member: str
    data: bytes
    alive: bool = True


class Retention:
    """The daemon-wide budget shared by every process's backlog."""

    def __init__(self, per_stream: int = DEFAULT_PER_STREAM, total: int = DEFAULT_TOTAL) -> None:
        self.per_stream = max(0, per_stream)
        self.total = max(0, total)
        self.size = 0
        self.alive = 0
        self._freed = 0
        self._trim: Callable[[int], int] | bool | None = False  # False: not looked up yet
        # Every live piece in arrival order (dead ones are skipped lazily).
        self._order: deque[_Piece] = deque()

    @property
    def enabled(self) -> bool:
        return self.per_stream > 0 and self.total > 0

    def backlog(self) -> Backlog:
        return Backlog(self)

    def _added(self, piece: _Piece) -> None:
        self._order.append(piece)
        self.alive += 1
        if len(self._order) > 4 * self.alive + 1024:
            # Taken pieces linger in the order queue behind an old live one.
            self._order = deque(p for p in self._order if p.alive)

    def _grown(self, nbytes: int) -> None:
        self.size += nbytes
        while self.size > self.total and self._order:
            oldest = self._order.popleft()
            if oldest.alive:
                oldest.owner._drop(oldest)

    def _removed(self, nbytes: int, pieces: int) -> None:
        self.size -= nbytes
        self.alive -= pieces
        if not self.alive:
            self._order.clear()
        self._freed += nbytes
        if self._freed >= _TRIM_AFTER and self.size < self._freed:
            self._freed = 0
            if self._trim is False:
                self._trim = _load_malloc_trim()
            if callable(self._trim):
                self._trim(0)


class Backlog:
    """The retained output of one process."""

    __slots__ = ("_members", "_pieces", "_retention", "_sizes")

    def __init__(self, retention: Retention) -> None:
        self._retention = retention
        self._pieces: deque[_Piece] = deque()
        self._members: dict[str, deque[_Piece]] = {}
        self._sizes: dict[str, int] = {}

    @property
    def size(self) -> int:
        return sum(self._sizes.values())

    def __bool__(self) -> bool:
        return any(self._sizes.values())

    def add(self, member: str, data: bytes) -> None:
        retention = self._retention
        limit = retention.per_stream
        if not retention.enabled or not data:
            return
        if len(data) > limit:
            data = data[utf8_start(data, len(data) - limit) :]
        pieces = self._members.setdefault(member, deque())
        tail = self._pieces[-1] if self._pieces else None
        if (
            tail is not None
            and tail.alive
            and tail.member == member
            and len(tail.data) + len(data) <= _JOIN_LIMIT
        ):
            # Joined in place: the piece keeps its place in the daemon-wide order.
            tail.data += data
        else:
            tail = _Piece(self, member, data)
            self._pieces.append(tail)
            pieces.append(tail)
            retention._added(tail)
        self._sizes[member] = self._sizes.get(member, 0) + len(data)
        self._trim(member, limit)
        retention._grown(len(data))

    def _trim(self, member: str, limit: int) -> None:
        pieces = self._members[member]
        while self._sizes[member] > limit:
            oldest = pieces[0]
            excess = self._sizes[member] - limit
            if len(oldest.data) <= excess:
                self._drop(oldest)
                continue
            cut = utf8_start(oldest.data, excess)
            oldest.data = oldest.data[cut:]
            self._sizes[member] -= cut
            self._retention._removed(cut, 0)
            if not oldest.data:
                self._drop(oldest)

    def _drop(self, piece: _Piece) -> None:
        piece.alive = False
        pieces = self._members[piece.member]
        # Pieces die oldest first within a member, so this is the head.
        while pieces and not pieces[0].alive:
            pieces.popleft()
        while self._pieces and not self._pieces[0].alive:
            self._pieces.popleft()
        self._sizes[piece.member] -= len(piece.data)
        self._retention._removed(len(piece.data), 1)
        piece.data = b""

    def peek(self) -> list[tuple[str, bytes]]:
        """Everything kept, in order, left in place (a live upgrade copies it)."""
        return [(p.member, p.data) for p in self._pieces if p.alive]

    def take(self) -> list[tuple[str, bytes]]:
        """Everything kept, in the order it was written; the backlog is empty after."""
        out = [(p.member, p.data) for p in self._pieces if p.alive]
        self.clear()
        return out

    def clear(self) -> None:
        count = 0
        for piece in self._pieces:
            if piece.alive:
                piece.alive = False
                piece.data = b""
                count += 1
        self._retention._removed(self.size, count)
        self._pieces.clear()
        self._members.clear()
        self._sizes.clear()
