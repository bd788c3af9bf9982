"""The pause path's costs (issue 9), each next to a baseline measured in the same run.

1. Time to frozen: `POST /freeze?maxWaitMs=2000` with 50 running commands, vs writing
   `cgroup.freeze` of `user` and `ptys` directly and polling `cgroup.events` until both read
   `frozen 1`.
2. What placing each command in a cgroup of its own costs on `commands.run("true")`: a daemon
   on a private cgroup2 tree vs one started with `-no-cgroups`, calls alternated.

Both run at nice -20, as the systemd unit runs envd; the 50 commands run at nice 0 (without
the unit's cpu.weight, which this machine's cgroup2 tree cannot set).

Needs root (it mounts cgroup2 in a temp dir, see tests/cgroupfs.py).

    .venv/bin/python -m bench.freeze [freezes] [runs]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import summary
from tests.cgroupfs import CgroupFs
from tests.control import sdk_sandbox
from tests.daemon import Daemon

USER = "user"
COMMANDS = 50
BUSY = (
    os.environ.get("BENCH_FREEZE_CMD")
    or "while :; do i=0; while [ $i -lt 200 ]; do i=$((i+1)); done; sleep 0.01; done"
)


def _frozen(path: Path) -> bool:
    return "frozen 1" in (path / "cgroup.events").read_text().splitlines()


def direct_freeze(fs: CgroupFs) -> None:
    targets = [fs.path("user"), fs.path("ptys")]
    for t in targets:
        (t / "cgroup.freeze").write_text("1")
    while not all(_frozen(t) for t in targets):
        time.sleep(0.0005)


def direct_thaw(fs: CgroupFs) -> None:
    for name in ("user", "ptys"):
        (fs.path(name) / "cgroup.freeze").write_text("0")


def time_to_frozen(freezes: int) -> None:
    fs = CgroupFs()
    try:
        with Daemon(*fs.args) as daemon, httpx.Client(base_url=daemon.url) as http:
            sbx = sdk_sandbox(daemon, None)
            handles: list[Any] = [
                sbx.commands.run(BUSY, background=True, user=USER, timeout=0)
                for _ in range(COMMANDS)
            ]
            while len(fs.all_procs("user")) < COMMANDS:
                time.sleep(0.05)
            api: list[float] = []
            direct: list[float] = []
            for _ in range(freezes):
                started = time.perf_counter()
                r = http.post("/freeze", params={"maxWaitMs": 2000})
                api.append(time.perf_counter() - started)
                body = r.json()
                assert body["frozen"] == 2, body
                assert body["notFrozen"] == 0, body
                http.post("/unfreeze")
                time.sleep(0.05)
                started = time.perf_counter()
                direct_freeze(fs)
                direct.append(time.perf_counter() - started)
                direct_thaw(fs)
                time.sleep(0.05)
            base = summary(f"baseline: cgroup.freeze + poll, {COMMANDS} cmds", direct)
            ours = summary(f"envd: /freeze?maxWaitMs=2000, {COMMANDS} cmds", api)
            print(
                f"/freeze p50 = {ours['p50_ms']:.2f} ms vs direct {base['p50_ms']:.2f} ms "
                f"(+{ours['p50_ms'] - base['p50_ms']:.2f} ms, "
                f"{ours['p50_ms'] / base['p50_ms']:.1f}x)"
            )
            for h in handles:
                h.kill()
    finally:
        fs.close()


def placement_cost(runs: int) -> None:
    """Both daemons at once, calls alternated, so that machine noise hits both alike."""
    fs = CgroupFs()
    try:
        with Daemon("-no-cgroups") as plain, Daemon(*fs.args) as placed:
            sandboxes = {
                "-no-cgroups": sdk_sandbox(plain, None),
                "cgroups": sdk_sandbox(placed, None),
            }
            samples: dict[str, list[float]] = {label: [] for label in sandboxes}
            for i in range(runs + 20):
                for label, sbx in sandboxes.items():
                    started = time.perf_counter()
                    sbx.commands.run("true", user=USER)
                    if i >= 20:  # warm-up
                        samples[label].append(time.perf_counter() - started)
            results = {
                label: summary(f'commands.run("true") {label}', s) for label, s in samples.items()
            }
        base, ours = results["-no-cgroups"], results["cgroups"]
        print(
            f"cgroup placement p50 = +{ours['p50_ms'] - base['p50_ms']:.2f} ms "
            f"({ours['p50_ms'] / base['p50_ms']:.2f}x), "
            f"p99 {ours['p99_ms'] / base['p99_ms']:.2f}x"
        )
    finally:
        fs.close()


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench.freeze needs root (it mounts cgroup2)")
    # As the systemd unit runs envd (Nice=-20); the direct baseline runs at the same priority.
    os.nice(-20)
    freezes = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    time_to_frozen(freezes)
    placement_cost(runs)


if __name__ == "__main__":
    main()
