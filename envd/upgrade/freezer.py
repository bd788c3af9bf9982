"""The workload freezer as the upgrade uses it.

The upgrade needs the daemon's one freezer (envd.host.freezer), strictly:
the handover freezes in legacy mode with a 2 s wait and refuses to swap unless
everything froze; it holds the freezer's lock from the freeze to the execve,
so no /init or /unfreeze thaw can run in between; and it carries the list of
cgroups the guest had frozen itself, which the next image must leave frozen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from envd.host.freezer import FreezeOptions, WorkloadFreezer

NOT_FROZEN = "workload was not frozen before the handover"


class FreezeError(Exception):
    pass


class HandoverFreezer:
    def __init__(self, freezer: WorkloadFreezer) -> None:
        self.freezer = freezer

    @property
    def lock(self) -> asyncio.Lock:
        return self.freezer.lock

    async def freeze_locked(self, max_wait_s: float) -> None:
        """Freeze with `lock` held by the caller; FreezeError unless everything froze."""
        res = await self.freezer.freeze_locked(FreezeOptions(max_wait_s=max_wait_s))
        if not res.all_frozen:
            raise FreezeError(NOT_FROZEN)

    async def thaw_locked(self) -> None:
        """Thaw with `lock` held by the caller (errors are the freezer's to log)."""
        await self.freezer.thaw_locked()

    def guest_frozen(self) -> list[str]:
        return self.freezer.guest_frozen_paths()

    def resume_frozen(self, guest_frozen: Sequence[str]) -> None:
        """After the swap: the workload is still frozen, and this freezer owns that freeze."""
        self.freezer.resume_frozen(guest_frozen)
