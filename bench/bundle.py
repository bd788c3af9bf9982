"""The frozen bundle's numbers for packaging/README.md: start to the first
`/health` 204, idle RSS, size on disk, against the virtualenv daemon measured
in the same run (the baseline).

RSS is the sum over the daemon's process tree. The static variant's loader
path is absolute (/usr/lib/envd/glibc/...), so it runs chrooted into a root
holding only the static overlay (root needed for it).

    make overlay && .venv/bin/python -m bench.bundle [runs]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import summary
from bench.startup import rss_mib, wait_health
from tests.daemon import free_port

DIST = Path(__file__).resolve().parent.parent / "dist"
VARIANTS = {
    "virtualenv (baseline)": [sys.executable, "-m", "envd"],
    "onedir (dist/envd/envd)": [str(DIST / "envd" / "envd")],
}


def static_root(parent: str) -> Path:
    """A root with nothing but the static overlay's files (no libc, no shell)."""
    root = Path(parent) / "root"
    root.mkdir()
    tarball = DIST / "envd-overlay-static.tar.gz"
    subprocess.run(["tar", "-C", str(root), "-xzf", str(tarball)], check=True)
    return root


def tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            pids += tree(int(child))
    return pids


def cold_start(command: list[str]) -> tuple[float, float]:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "-port", str(port), "-isnotfc"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_health(port, proc, timeout=30)
        elapsed = time.perf_counter() - started
        time.sleep(1.0)  # let start-up garbage settle before reading RSS
        return elapsed, sum(rss_mib(p) for p in tree(proc.pid))
    finally:
        proc.terminate()
        proc.wait()


def size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    variants = dict(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp:
        root = None
        if os.geteuid() == 0:
            root = static_root(tmp)
            # The daemon reads /proc (psutil): the host's, bound for the run.
            (root / "proc").mkdir()
            subprocess.run(["mount", "--bind", "/proc", str(root / "proc")], check=True)
            variants["static (dist/envd-static, chrooted)"] = ["chroot", str(root), "/usr/bin/envd"]
        try:
            # Interleaved, so that a change in the machine's load hits every variant alike.
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
            for _ in range(runs):
                for name, command in variants.items():
                    results[name].append(cold_start(command))
        finally:
            if root is not None:
                subprocess.run(["umount", str(root / "proc")], check=True)
    base = None
    for name, samples in results.items():
        start = summary(f"{name}: start to /health 204", [r[0] for r in samples])
        rss = statistics.median(r[1] for r in samples)
        base = base or start["p50_ms"]
        ratio = start["p50_ms"] / base
        print(f"    idle RSS (median) {rss:.1f} MiB, start p50 = {ratio:.2f}x baseline")
    for name in ("envd", "envd-static"):
        print(f"size: dist/{name} {size_mib(DIST / name):.1f} MiB")
    for tarball in sorted(DIST.glob("envd-overlay*.tar.gz")):
        print(f"size: {tarball.name} {size_mib(tarball):.1f} MiB")


if __name__ == "__main__":
    main()
