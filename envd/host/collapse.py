"""`/collapse`: back envd's own anonymous memory with huge pages before a snapshot.

For every anonymous read-write mapping, `MADV_HUGEPAGE` and then
`MADV_COLLAPSE` on each 2 MiB-aligned window fully inside it. The kernel
accepts a collapse of a window that already is a huge page as well, so the
split between real work and no work comes from the `AnonHugePages` growth in
`/proc/self/smaps_rollup`. Runs in a worker thread: a collapse copies up to
2 MiB per window and may compact memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass

HUGE = 2 << 20
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int


class CollapseCancelled(Exception):
    pass


@dataclass(slots=True)
class CollapseStats:
    regions: int = 0
    chunks: int = 0  # collapsed + already_huge + skipped
    collapsed: int = 0
    already_huge: int = 0
    skipped: int = 0


def anon_rw_regions(maps: str) -> list[tuple[int, int]]:
    """(start, end) of the mappings with `rw` permissions and no backing path."""
    regions = []
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        perms = fields[1]
        path = fields[5].strip() if len(fields) > 5 else ""
        if perms[:2] != "rw" or path:
            continue
        start, _, end = fields[0].partition("-")
        regions.append((int(start, 16), int(end, 16)))
    return regions


def anon_huge_bytes(rollup: str) -> int | None:
    for line in rollup.splitlines():
        if line.startswith("AnonHugePages:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
            return None
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _anon_huge_now() -> int | None:
    try:
        return anon_huge_bytes(_read("/proc/self/smaps_rollup"))
    except OSError:
        return None


def collapse_self(cancel: threading.Event) -> CollapseStats:
    """Raises CollapseCancelled when `cancel` is set before the walk ends."""
    regions = anon_rw_regions(_read("/proc/self/maps"))
    stats = CollapseStats()
    accepted = 0
    before = _anon_huge_now()
    for start, end in regions:
        if cancel.is_set():
            break
        stats.regions += 1
        _libc.madvise(start, end - start, MADV_HUGEPAGE)  # best effort, as upstream
        window = (start + HUGE - 1) & ~(HUGE - 1)
        while window + HUGE <= end:
            if cancel.is_set():
                break
            stats.chunks += 1
            if _libc.madvise(window, HUGE, MADV_COLLAPSE) == 0:
                accepted += 1
            else:
                stats.skipped += 1
            window += HUGE
    after = _anon_huge_now()
    if before is None or after is None or after < before:
        stats.collapsed = accepted
    else:
        stats.collapsed = min((after - before) // HUGE, accepted)
    stats.already_huge = accepted - stats.collapsed
    if cancel.is_set():
        raise CollapseCancelled("context canceled")
    return stats
