"""The workload freezer as the upgrade sees it (seam for the cgroups work).

The upgrade needs three things from a freezer: freeze the workload and keep
the freeze lock held across the swap (so no `/init` or `/unfreeze` thaw can
run in between), thaw, and the list of cgroups the guest had frozen itself.

When the daemon has a real freezer (`envd.host.freezer`, the cgroups work),
`workload_freezer` adapts it. Until then `LegacyCgroupFreezer` stands in: it
does upstream's legacy-mode freeze on `<cgroup root>/user` and `/ptys` where
those cgroups exist, and nothing where they do not (with `-no-cgroups`, or on
a daemon that does not yet place children in cgroups: the freeze is then a
no-op that always succeeds, because nothing is frozen either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import Protocol

# Upstream's handover freeze waits this long for `frozen 1` before refusing the swap.
HANDOVER_MAX_WAIT_S = 2.0
POLL_S = 0.002
LEGACY_GROUPS = ("user", "ptys")


class FreezeError(Exception):
    pass


NOT_FROZEN = "workload was not frozen before the handover"


class Freezer(Protocol):
    lock: asyncio.Lock

    async def freeze_locked(self, max_wait_s: float) -> None:
        """Freeze with `lock` held by the caller; FreezeError unless everything froze."""

    async def thaw_locked(self) -> None:
        """Thaw with `lock` held by the caller; errors are only logged."""

    def guest_frozen(self) -> list[str]: ...

    def set_guest_frozen(self, paths: Sequence[str]) -> None: ...


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _frozen(group: str) -> bool:
    try:
        with open(os.path.join(group, "cgroup.events")) as f:
            return any(line.strip() == "frozen 1" for line in f)
    except OSError:
        return False


class LegacyCgroupFreezer:
    """`user` and `ptys` under the cgroup root, frozen through `cgroup.freeze`."""

    def __init__(self, root: str | None) -> None:
        self.root = root
        self.lock = asyncio.Lock()
        self._guest_frozen: list[str] = []

    def _groups(self) -> list[str]:
        if self.root is None:
            return []
        paths = [os.path.join(self.root, name) for name in LEGACY_GROUPS]
        return [p for p in paths if os.path.exists(os.path.join(p, "cgroup.freeze"))]

    async def freeze_locked(self, max_wait_s: float) -> None:
        groups = self._groups()
        for group in groups:
            try:
                _write(os.path.join(group, "cgroup.freeze"), "1")
            except OSError as e:
                raise FreezeError(f"freeze {group}: {e.strerror}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        while not all(_frozen(g) for g in groups):
            if loop.time() >= deadline:
                raise FreezeError(NOT_FROZEN)
            await asyncio.sleep(POLL_S)

    async def thaw_locked(self) -> None:
        for group in self._groups():
            with contextlib.suppress(OSError):
                _write(os.path.join(group, "cgroup.freeze"), "0")

    def guest_frozen(self) -> list[str]:
        return list(self._guest_frozen)

    def set_guest_frozen(self, paths: Sequence[str]) -> None:
        self._guest_frozen = list(paths)


def workload_freezer(cgroup_root: str, no_cgroups: bool) -> Freezer:
    """The daemon's freezer for the upgrade (see the module docstring)."""
    return LegacyCgroupFreezer(None if no_cgroups else cgroup_root)
