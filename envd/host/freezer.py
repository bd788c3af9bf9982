"""The workload freezer: /freeze, /unfreeze, the thaw in /init and the live upgrade share it.

One asyncio lock serialises every freeze and thaw (http-api.md §6–7). Callers
that must keep the workload frozen across more than one step (the upgrade's
handover) take `freezer.lock` themselves and use `freeze_locked` /
`thaw_locked`; everyone else calls `freeze` / `thaw`. The walks and the wait
for `cgroup.events` run in a worker thread: a hierarchy walk reads thousands of
files, and the wait polls every 2 ms.

A freeze arms a watchdog (10 minutes, `-thaw-watchdog-ms`) that thaws by
itself when no successful thaw follows; a thaw that fails re-arms it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from envd.host import cgroup_tree
from envd.host.cgroups import WORKLOAD, Manager, Unobservable

log = logging.getLogger(__name__)
_T = TypeVar("_T")

LEGACY = "legacy"
HIERARCHY = "hierarchy"
DEFAULT_WATCHDOG_S = 600.0
DEFAULT_FREEZE_MAX_CGROUPS = 512
THAW_MAX_CGROUPS = 8192
POLL_S = 0.002
# What the live upgrade waits for the workload to stop before its handover.
HANDOVER_MAX_WAIT_S = 2.0


class FreezeCancelled(Exception):
    """The caller went away while waiting for the lock (→ 503)."""


@dataclass(frozen=True, slots=True)
class FreezeOptions:
    max_wait_s: float = 0.0
    mode: str = LEGACY
    max_cgroups: int = 0

    @property
    def bound(self) -> int:
        if self.max_cgroups <= 0:
            return DEFAULT_FREEZE_MAX_CGROUPS
        return min(self.max_cgroups, THAW_MAX_CGROUPS)


@dataclass(slots=True)
class FreezeResult:
    mode: str = LEGACY
    requested: int = 0
    frozen: int = 0
    not_frozen: int = 0
    failed: int = 0
    scan_failed: int = 0
    pre_frozen: int = 0
    unobservable: int = 0
    visited: int = 0
    allowlisted: int = 0
    truncated: bool = False
    sweep_s: float = 0.0
    wait_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def all_frozen(self) -> bool:
        return self.not_frozen == 0 and self.failed == 0

    def body(self) -> dict[str, object]:
        """The `FreezeResult` JSON object, keys in alphabetical order as upstream's encoder."""
        return {
            "allowlisted": self.allowlisted,
            "failed": self.failed,
            "frozen": self.frozen,
            "mode": self.mode,
            "notFrozen": self.not_frozen,
            "preFrozen": self.pre_frozen,
            "requested": self.requested,
            "sweepMs": int(self.sweep_s * 1000),
            "truncated": self.truncated,
            "unobservable": self.unobservable,
            "visited": self.visited,
            "waitMs": int(self.wait_s * 1000),
        }


@dataclass(slots=True)
class ThawResult:
    visited: int = 0
    thawed: int = 0
    failed: int = 0
    preserved: int = 0
    truncated: bool = False
    discovered: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.truncated and self.failed == 0


@dataclass(slots=True)
class AuditResult:
    visited: int = 0
    frozen: int = 0
    escaped: int = 0
    violations: int = 0
    truncated: bool = False

    def header(self) -> dict[str, object]:
        return {
            "visited": self.visited,
            "frozen": self.frozen,
            "escaped": self.escaped,
            "violations": self.violations,
            "truncated": self.truncated,
        }


@dataclass(slots=True)
class _Target:
    label: str
    frozen: Callable[[], bool]


class WorkloadFreezer:
    def __init__(
        self,
        manager: Manager,
        watchdog_s: float = DEFAULT_WATCHDOG_S,
        proc_self_cgroup: str = cgroup_tree.PROC_SELF_CGROUP,
    ) -> None:
        self.manager = manager
        self.lock = asyncio.Lock()
        self.watchdog_s = watchdog_s
        self._proc_self_cgroup = proc_self_cgroup
        # Cgroups the guest had frozen itself: never frozen nor thawed by us.
        self._guest_frozen: set[str] = set()
        self._freeze_active = False
        self._last_mode: str | None = None
        self._generation = 0  # advances on every freeze and thaw
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_gen = 0
        self._watchdog_task: asyncio.Task[None] | None = None
        self.on_watchdog: Callable[[ThawResult], None] | None = None
        # Threads of its own: the shared executor can be full of spawns that wait
        # for children the freeze stopped, and the thaw must never wait behind them.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="envd-freezer")

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- freeze ----------------------------------------------------------

    async def freeze(
        self, opts: FreezeOptions, cancelled: asyncio.Event | None = None
    ) -> FreezeResult:
        """Take the lock (FreezeCancelled if `cancelled` fires first) and freeze."""
        if not await acquire_unless(self.lock, cancelled):
            raise FreezeCancelled
        try:
            return await self.freeze_locked(opts, cancelled)
        finally:
            self.lock.release()

    async def freeze_locked(
        self, opts: FreezeOptions, cancelled: asyncio.Event | None = None
    ) -> FreezeResult:
        """Freeze with `self.lock` already held; the wait ends early when `cancelled` fires."""
        stop = threading.Event()
        bridge = asyncio.ensure_future(_set_when(cancelled, stop))
        try:
            res = await self._run(self._freeze, opts, stop)
        finally:
            bridge.cancel()
        if res.requested > 0:
            self._arm_watchdog()
        return res

    def _freeze(self, opts: FreezeOptions, stop: threading.Event) -> FreezeResult:
        res = FreezeResult()
        start = time.monotonic()
        mgr = self.manager
        rescan = mgr.walkable and not self._freeze_in_effect()
        if rescan:
            # A fresh freeze: learn what the guest froze itself, so the thaw leaves it.
            self._guest_frozen, truncated, res.scan_failed = self._scan_guest_frozen()
            res.truncated = res.truncated or truncated
        res.pre_frozen = len(self._guest_frozen)
        if opts.mode == HIERARCHY and mgr.walkable:
            res.mode = HIERARCHY
            pending = self._sweep_hierarchy(res, opts.bound, rescan)
        else:
            res.mode = LEGACY
            pending = self._sweep_legacy(res)
        res.sweep_s = time.monotonic() - start
        self._await_frozen(res, pending, opts.max_wait_s, stop)
        res.wait_s = time.monotonic() - start - res.sweep_s
        self._last_mode = res.mode
        self._generation += 1
        self._freeze_active = self._freeze_active or res.requested > 0
        if res.errors:
            log.error("some cgroups failed to freeze: %s", "; ".join(res.errors))
        return res

    def _sweep_legacy(self, res: FreezeResult) -> list[_Target]:
        pending: list[_Target] = []
        for kind in WORKLOAD:
            try:
                self.manager.freeze(kind)
            except OSError as e:
                res.errors.append(f"freeze {kind} cgroup: {e}")
                res.failed += 1
                continue
            res.requested += 1
            pending.append(_Target(kind, functools.partial(self.manager.frozen, kind)))
        return pending

    def _sweep_hierarchy(self, res: FreezeResult, bound: int, adopt_late: bool) -> list[_Target]:
        mgr = self.manager
        root = mgr.root or "/"
        try:
            me = cgroup_tree.self_cgroup_path(root, self._proc_self_cgroup)
        except cgroup_tree.SelfCgroupError as e:
            res.mode = LEGACY
            res.errors.append(f"locate envd cgroup, falling back to legacy mode: {e}")
            return self._sweep_legacy(res)
        pending = self._sweep_legacy(res)
        descend = cgroup_tree.descend_set(root, me)
        inside = set(descend)
        inside.update(p for k in WORKLOAD if (p := mgr.path_for(k)) is not None)
        for ancestor in descend:
            try:
                children = mgr.children_of(ancestor)
            except FileNotFoundError:
                continue
            except OSError as e:
                res.errors.append(f"list children of {ancestor}: {e}")
                res.failed += 1
                continue
            for child in children:
                if res.visited >= bound:
                    res.truncated = True
                    return pending
                res.visited += 1
                if child in inside:
                    continue
                if cgroup_tree.allowlisted(root, child):
                    res.allowlisted += 1
                    continue
                if child in self._guest_frozen:
                    continue
                if adopt_late:
                    # Frozen by the guest after our scan: theirs, too.
                    with contextlib.suppress(OSError):
                        if mgr.freeze_requested_at(child):
                            self._guest_frozen.add(child)
                            res.pre_frozen += 1
                            continue
                try:
                    mgr.freeze_at(child)
                except OSError as e:
                    res.errors.append(f"freeze {child}: {e}")
                    res.failed += 1
                    continue
                res.requested += 1
                pending.append(_Target(child, functools.partial(mgr.frozen_at, child)))
        return pending

    def _await_frozen(
        self, res: FreezeResult, targets: list[_Target], budget: float, stop: threading.Event
    ) -> None:
        """Poll cgroup.events until every target reads frozen, the budget ends, or `stop`."""
        wait_failed = 0
        remaining = targets if budget > 0 else []
        deadline = time.monotonic() + budget
        while remaining:
            waiting: list[_Target] = []
            for target in remaining:
                try:
                    if target.frozen():
                        res.frozen += 1
                    else:
                        waiting.append(target)
                except Unobservable:
                    res.unobservable += 1
                except OSError as e:
                    wait_failed += 1
                    res.errors.append(f"read {target.label} cgroup.events: {e}")
            remaining = waiting
            left = deadline - time.monotonic()
            if not remaining or left <= 0 or stop.is_set() or stop.wait(min(POLL_S, left)):
                break
        res.not_frozen = res.requested - res.frozen - wait_failed - res.unobservable
        res.failed += wait_failed

    def _scan_guest_frozen(self) -> tuple[set[str], bool, int]:
        """Every cgroup whose own cgroup.freeze reads 1, except ours (whole tree, bounded)."""
        mgr = self.manager
        root = mgr.root or "/"
        try:
            me = cgroup_tree.self_cgroup_path(root, self._proc_self_cgroup)
        except cgroup_tree.SelfCgroupError as e:
            log.warning("guest-freeze scan: %s", e)
            return set(), False, 1
        ours = set(cgroup_tree.descend_set(root, me))
        found: set[str] = set()
        failed = 0
        visited = 0
        queue = [os.path.normpath(root)]
        while queue:
            current = queue.pop(0)
            if visited >= THAW_MAX_CGROUPS:
                return found, True, failed
            visited += 1
            if current not in ours and not cgroup_tree.allowlisted(root, current):
                try:
                    if mgr.freeze_requested_at(current):
                        found.add(current)
                except OSError:
                    failed += 1
            try:
                queue.extend(mgr.children_of(current))
            except FileNotFoundError:
                continue
            except OSError:
                failed += 1
        return found, False, failed

    # --- thaw ------------------------------------------------------------

    async def thaw(self) -> ThawResult:
        """Take the lock (whoever asked may leave meanwhile: a thaw always completes) and thaw."""
        async with self.lock:
            return await self.thaw_locked()

    async def thaw_locked(self) -> ThawResult:
        res = await self._run(self._thaw)
        if res.ok:
            self._disarm_watchdog()
        return res

    def _thaw(self) -> ThawResult:
        self._last_mode = None
        self._generation += 1
        res = ThawResult()
        mgr = self.manager
        discover = mgr.walkable and self._freeze_in_effect()
        for kind in WORKLOAD:
            try:
                mgr.unfreeze(kind)
            except OSError as e:
                res.errors.append(f"unfreeze {kind} cgroup: {e}")
                res.failed += 1
        if discover:
            res.discovered = True
            self._thaw_discovered(res)
        if res.ok:
            self._freeze_active = False
        return res

    def _thaw_discovered(self, res: ThawResult) -> None:
        mgr = self.manager
        root = mgr.root or "/"
        try:
            me = cgroup_tree.self_cgroup_path(root, self._proc_self_cgroup)
        except cgroup_tree.SelfCgroupError as e:
            res.errors.append(f"locate envd cgroup for the thaw: {e}")
            return
        chain = set(cgroup_tree.ancestor_chain(root, me))
        queue = [os.path.normpath(root)]
        while queue:
            if res.visited >= THAW_MAX_CGROUPS:
                res.truncated = True
                res.errors.append(
                    f"thaw walk truncated at {THAW_MAX_CGROUPS} cgroups: some may still be frozen"
                )
                return
            current = queue.pop(0)
            res.visited += 1
            skip = current in chain
            if not skip and current in self._guest_frozen:
                res.preserved += 1
                skip = True
            if not skip:
                self._thaw_one(current, res)
            try:
                queue.extend(mgr.children_of(current))
            except FileNotFoundError:
                continue
            except OSError as e:
                res.errors.append(f"list children of {current}: {e}")
                res.failed += 1

    def _thaw_one(self, path: str, res: ThawResult) -> None:
        try:
            if not self.manager.freeze_requested_at(path):
                return
            self.manager.unfreeze_at(path)
        except FileNotFoundError:
            return  # the mount root has no cgroup.freeze; a cgroup may vanish mid-walk
        except OSError as e:
            res.errors.append(f"thaw {path}: {e}")
            res.failed += 1
            return
        res.thawed += 1

    def _freeze_in_effect(self) -> bool:
        if self._freeze_active:
            return True
        for kind in WORKLOAD:
            with contextlib.suppress(OSError, Unobservable):
                if self.manager.frozen(kind):
                    return True
        return False

    @property
    def freeze_in_effect(self) -> bool:
        return self._freeze_active

    # --- live upgrade -------------------------------------------------------

    def guest_frozen_paths(self) -> list[str]:
        """The guest's own frozen cgroups, relative to the root (as the handover carries them)."""
        root = os.path.normpath(self.manager.root or "/")
        return sorted(os.path.relpath(p, root) for p in self._guest_frozen)

    def resume_frozen(self, guest_frozen: Iterable[str]) -> None:
        """A new image took over a workload the previous one froze: own that freeze.

        Without this, a /freeze before the next thaw would take our own frozen
        cgroups for the guest's, and no watchdog would back up a missing /init.
        """
        root = os.path.normpath(self.manager.root or "/")
        self._guest_frozen = {
            os.path.normpath(os.path.join(root, p))
            for p in guest_frozen
            if p and not os.path.isabs(p) and p != ".." and not p.startswith("../")
        }
        self._freeze_active = True
        self._arm_watchdog()

    # --- audit at resume ---------------------------------------------------

    async def audit(self) -> AuditResult | None:
        """What the last hierarchy sweep left frozen, before /init thaws; None when not one."""
        if self._last_mode != HIERARCHY or not self.manager.walkable:
            return None
        generation = self._generation
        res = await self._run(self._audit)
        if res is None or generation != self._generation:
            return None  # a thaw ran meanwhile: a half-thawed picture is no report
        return res

    def _audit(self) -> AuditResult | None:
        mgr = self.manager
        root = os.path.normpath(mgr.root or "/")
        try:
            me = cgroup_tree.self_cgroup_path(root, self._proc_self_cgroup)
        except cgroup_tree.SelfCgroupError as e:
            log.warning("could not audit the frozen cgroup set at resume: %s", e)
            return None
        exempt = set(cgroup_tree.descend_set(root, me))
        res = AuditResult()
        queue = [root]
        while queue:
            if res.visited >= THAW_MAX_CGROUPS:
                res.truncated = True
                break
            current = queue.pop(0)
            res.visited += 1
            with contextlib.suppress(OSError):
                queue.extend(mgr.children_of(current))
            if current == root:
                continue
            try:
                frozen = mgr.frozen_at(current)
            except OSError:
                continue
            protected = current in exempt or cgroup_tree.allowlisted(root, current)
            if frozen and protected:
                res.violations += 1
            elif frozen:
                res.frozen += 1
            elif not protected:
                res.escaped += 1
        return res

    # --- watchdog ----------------------------------------------------------

    def _arm_watchdog(self) -> None:
        if self.watchdog_s <= 0:
            return
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog_gen += 1
        generation = self._watchdog_gen
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(self.watchdog_s, self._fire_watchdog, generation)

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._watchdog_gen += 1

    def _fire_watchdog(self, generation: int) -> None:
        self._watchdog = None
        self._watchdog_task = asyncio.create_task(self._watchdog_thaw(generation))

    async def _watchdog_thaw(self, generation: int) -> None:
        async with self.lock:
            if generation != self._watchdog_gen:
                return  # a thaw or a newer freeze came first
            res = await self._run(self._thaw)
            if res.ok:
                self._disarm_watchdog()
            else:
                self._arm_watchdog()
        log.warning(
            "thaw watchdog fired: no thaw followed the freeze (thawed=%d visited=%d failed=%d%s)",
            res.thawed,
            res.visited,
            res.failed,
            f": {'; '.join(res.errors)}" if res.errors else "",
        )
        if self.on_watchdog is not None:
            self.on_watchdog(res)

    @property
    def watchdog_armed(self) -> bool:
        return self._watchdog is not None

    async def close(self) -> None:
        self._disarm_watchdog()
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog_task
        self._executor.shutdown(wait=False, cancel_futures=True)


async def _set_when(event: asyncio.Event | None, stop: threading.Event) -> None:
    if event is None:
        return
    await event.wait()
    stop.set()


async def acquire_unless(lock: asyncio.Lock, gone: asyncio.Event | None) -> bool:
    """Take the lock unless `gone` fires first (then False, lock not held)."""
    if gone is None:
        await lock.acquire()
        return True
    if gone.is_set():
        return False
    return await acquire_before(lock, gone)


async def acquire_before(lock: asyncio.Lock, gone: asyncio.Event) -> bool:
    """Race the lock against `gone`: True with the lock held, False without it."""
    acquire = asyncio.ensure_future(lock.acquire())
    left = asyncio.ensure_future(gone.wait())
    await asyncio.wait({acquire, left}, return_when=asyncio.FIRST_COMPLETED)
    left.cancel()
    if acquire.done() and not acquire.cancelled():
        return True
    acquire.cancel()
    try:
        await acquire
    except asyncio.CancelledError:
        return False
    lock.release()  # won the lock in the same instant the caller left
    return False
