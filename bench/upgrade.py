"""The live upgrade's pause next to the daemon's cold start, in the same run.

pause: from sending `POST /upgrade` (the freeze is its first step) to the
answer of the `/init` that thaws the workload, polling `/health` in between
as the orchestrator does (both measurements poll alike, with a bare
http.client every 2 ms): the time the workload stands still. Measured with
no processes and with `procs` running ones (sleepers, one of them writing).
cold start: spawning `python -m envd` to its first `/health` 204. Rounds
alternate, so both see the same machine load.

    .venv/bin/python -m bench.upgrade [rounds] [procs]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import summary
from bench.startup import wait_health
from tests.control import ControlDaemon, rfc3339
from tests.upgrade_helpers import start, unary, upgrade


def cold_start(root: Path) -> float:
    daemon = ControlDaemon(root, "-no-cgroups")
    began = time.perf_counter()
    assert daemon.proc is None
    daemon.proc = subprocess.Popen(
        [sys.executable, "-m", "envd", *daemon.args],
        stdout=daemon.log,
        stderr=subprocess.STDOUT,
        env=daemon.env,
    )
    wait_health(daemon.port, daemon.proc)  # the same poll as for the upgraded daemon
    took = time.perf_counter() - began
    daemon.stop()
    return took


def pause(daemon: ControlDaemon) -> float:
    began = time.perf_counter()
    if upgrade(daemon.url) is not None:
        raise RuntimeError("the upgrade answered (it failed)")
    assert daemon.proc is not None
    wait_health(daemon.port, daemon.proc, timeout=30)
    r = daemon.init({"timestamp": rfc3339()})
    took = time.perf_counter() - began
    if r.status_code != 204 or "x-envd-handover" not in r.headers:
        raise RuntimeError(f"/init after the upgrade: {r.status_code}")
    return took


def main(rounds: int, procs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        idle = ControlDaemon(root / "idle", "-no-cgroups")
        busy = ControlDaemon(root / "busy", "-no-cgroups")
        for d in (idle, busy):
            d.start()
            d.init({"timestamp": rfc3339()})
        streams = [start(busy.url, "sleep", "3600") for _ in range(max(0, procs - 1))]
        writer = "while :; do echo tick; sleep 0.01; done"
        streams.append(start(busy.url, "/bin/sh", "-c", writer))
        for s in streams:
            s.close()
        cold: list[float] = []
        idle_pause: list[float] = []
        busy_pause: list[float] = []
        try:
            for i in range(rounds):
                cold.append(cold_start(root / f"cold-{i}"))
                idle_pause.append(pause(idle))
                busy_pause.append(pause(busy))
            live = len(unary(busy.url, "List", {}).json().get("processes", []))
            if live != len(streams):
                raise RuntimeError(f"{live} of {len(streams)} processes after the upgrades")
        finally:
            for s in streams:
                kill = {"process": {"pid": s.pid}, "signal": "SIGNAL_SIGKILL"}
                if unary(busy.url, "SendSignal", kill).status_code != 200:
                    raise RuntimeError(f"could not kill {s.pid}")
            idle.stop()
            busy.stop()
        cold_p50 = summary("cold start (spawn → /health 204)", cold)["p50_ms"]
        idle_p50 = summary("upgrade pause, no processes", idle_pause)["p50_ms"]
        busy_p50 = summary(f"upgrade pause, {len(streams)} processes", busy_pause)["p50_ms"]
        ratios = f"idle {idle_p50 / cold_p50:.2f}x, busy {busy_p50 / cold_p50:.2f}x"
        print(f"pause / cold start (p50): {ratios}")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 10,
        int(sys.argv[2]) if len(sys.argv) > 2 else 20,
    )
