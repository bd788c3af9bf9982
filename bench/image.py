"""The debug image's numbers for packaging/README.md, next to the bare process's.

Image size; start to the first `/health` 204 (for the container: from
`podman run` to the 204 through the published port, so podman's own work is in
it); idle RSS (the sum over envd's processes: in the container, and in the
"as PID 1" bare run in a fresh PID namespace, envd's init and the daemon; a
bare process that is not PID 1 does not split). The bare variants run in the
same loop, interleaved, as the baseline.

    make image && .venv/bin/python -m bench.image [runs]      (root, podman)
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from bench.bundle import DIST, cold_start
from bench.common import summary
from bench.startup import rss_mib, wait_health
from tests.container import IMAGE, STATIC_IMAGE, Container, podman, tree
from tests.daemon import free_port
from tests.procfs import children


def container_start(image: str) -> tuple[float, float]:
    c = Container(image)
    try:
        time.sleep(1.0)  # as for the bare process: let start-up garbage settle
        return c.start_to_health, sum(rss_mib(p) for p in tree(c.init))
    finally:
        c.remove()


def bare_pid1(command: list[str]) -> tuple[float, float]:
    """`command` as PID 1 of a fresh PID namespace; RSS without unshare's own."""
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", *command, "-port", str(port), "-isnotfc"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_health(port, proc, timeout=30)
        elapsed = time.perf_counter() - started
        time.sleep(1.0)
        return elapsed, sum(rss_mib(p) for c in children(proc.pid) for p in tree(c))
    finally:
        # unshare --fork ignores SIGTERM itself: stop envd's init (PID 1) instead.
        for init in children(proc.pid):
            os.kill(init, signal.SIGTERM)
        proc.wait()


VARIANTS: dict[str, Callable[[], tuple[float, float]]] = {
    "bare: virtualenv (baseline)": lambda: cold_start([sys.executable, "-m", "envd"]),
    "bare: onedir (dist/envd/envd)": lambda: cold_start([str(DIST / "envd" / "envd")]),
    "bare: onedir as PID 1": lambda: bare_pid1([str(DIST / "envd" / "envd")]),
    "container: localhost/envd-py:latest": lambda: container_start(IMAGE),
    "container: localhost/envd-py:static": lambda: container_start(STATIC_IMAGE),
}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for _ in range(runs):
        for name, measure in VARIANTS.items():
            results[name].append(measure())
    base = None
    for name, samples in results.items():
        start = summary(f"{name}: start to /health 204", [r[0] for r in samples])
        rss = statistics.median(r[1] for r in samples)
        base = base or start["p50_ms"]
        print(f"    idle RSS (median) {rss:.1f} MiB, start p50 = {start['p50_ms'] / base:.2f}x")
    for image in ("localhost/envd-py-base:bookworm", IMAGE, STATIC_IMAGE):
        size = int(podman("image", "inspect", "--format", "{{.Size}}", image))
        print(f"size: {image} {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
