"""The cgroup manager's arithmetic, the tree rules, and the freezer driven in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from envd.host import cgroup_tree
from envd.host.cgroups import (
    CgroupSetupError,
    NoopManager,
    Unobservable,
    create_cgroup2_manager,
    frozen_from_events,
    memory_limit,
)
from envd.host.freezer import FreezeOptions, WorkloadFreezer
from tests.cgroupfs import CgroupFs

GIB = 1 << 30


def test_memory_limit_keeps_an_eighth_at_most_128_mib() -> None:
    assert memory_limit("MemTotal:        1048576 kB\n") == GIB - GIB // 8
    assert memory_limit("MemFree: 1 kB\nMemTotal: 8388608 kB\n") == 8 * GIB - (128 << 20)
    with pytest.raises(CgroupSetupError):
        memory_limit("MemFree: 1 kB\n")


def test_frozen_from_events() -> None:
    assert frozen_from_events("populated 1\nfrozen 1\n")
    assert not frozen_from_events("populated 1\nfrozen 0\n")
    assert not frozen_from_events("populated 0\n")  # never frozen


def test_tree_rules() -> None:
    root = "/sys/fs/cgroup"
    me = "/sys/fs/cgroup/system.slice/envd.service"
    assert cgroup_tree.ancestor_chain(root, me) == [
        root,
        f"{root}/system.slice",
        f"{root}/system.slice/envd.service",
    ]
    assert cgroup_tree.ancestor_chain(root, "/elsewhere") == [root]
    assert cgroup_tree.ancestor_chain(root, root) == [root]
    # envd at the root: system.slice is still walked into, so journald is never frozen whole.
    assert cgroup_tree.descend_set(root, root) == [root, f"{root}/system.slice"]
    assert cgroup_tree.allowlisted(root, f"{root}/init.scope")
    assert cgroup_tree.allowlisted(root, f"{root}/system.slice/rpcbind.socket/child")
    assert cgroup_tree.allowlisted(root, f"{root}/socats")
    assert not cgroup_tree.allowlisted(root, f"{root}/init.scopes")
    assert not cgroup_tree.allowlisted(root, f"{root}/system.slice")


def test_self_cgroup_path(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/x\n0::/system.slice/envd.service\n")
    got = cgroup_tree.self_cgroup_path("/sys/fs/cgroup", str(proc))
    assert got == "/sys/fs/cgroup/system.slice/envd.service"
    proc.write_text("4:memory:/x\n")
    with pytest.raises(cgroup_tree.SelfCgroupError):
        cgroup_tree.self_cgroup_path("/sys/fs/cgroup", str(proc))


async def test_noop_freezer_reports_unobservable() -> None:
    freezer = WorkloadFreezer(NoopManager())
    with pytest.raises(Unobservable):
        NoopManager().frozen("user")
    res = await freezer.freeze(FreezeOptions(max_wait_s=0.1))
    assert (res.requested, res.unobservable, res.not_frozen) == (2, 2, 0)
    assert freezer.watchdog_armed
    assert (await freezer.thaw()).ok
    assert not freezer.watchdog_armed
    await freezer.close()


async def test_adopted_freeze_is_thawed_by_the_watchdog(cgroupfs: CgroupFs) -> None:
    manager = create_cgroup2_manager(str(cgroupfs.root))
    freezer = WorkloadFreezer(manager, watchdog_s=0.3)
    cgroupfs.set_freeze(1, "user")  # as the envd before a live upgrade left it
    freezer.resume_frozen([])
    assert freezer.freeze_in_effect
    for _ in range(100):
        if not cgroupfs.frozen("user"):
            break
        await asyncio.sleep(0.05)
    assert not cgroupfs.frozen("user")
    assert not freezer.freeze_in_effect
    await freezer.close()
    manager.close()
