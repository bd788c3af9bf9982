"""`GET /metrics`: what the orchestrator reads about the guest's resources."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil

CPUINFO = "/proc/cpuinfo"


class CPUSampler:
    """Busy share of all CPUs since the previous sample (process-global, as upstream).

    Sampling never sleeps: the first sample is taken at start-up and every
    `/metrics` call compares against the one before it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = self._times()

    @staticmethod
    def _times() -> tuple[float, float]:
        t = psutil.cpu_times()
        # guest/guest_nice are already counted in user/nice.
        total = sum(
            getattr(t, name, 0.0)
            for name in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
        )
        busy = total - t.idle - getattr(t, "iowait", 0.0)
        return total, busy

    def percent(self) -> float:
        total, busy = self._times()
        with self._lock:
            last_total, last_busy = self._last
            self._last = (total, busy)
        if busy <= last_busy:
            return 0.0
        if total <= last_total:
            return 100.0
        return min(100.0, max(0.0, 100.0 * (busy - last_busy) / (total - last_total)))


def cpu_count() -> int:
    """`processor` lines of /proc/cpuinfo, else what the kernel reports."""
    try:
        with open(CPUINFO) as f:
            count = sum(1 for line in f if line.startswith("processor"))
    except OSError:
        count = 0
    return count or psutil.cpu_count(logical=True) or 0


def collect(sampler: CPUSampler) -> dict[str, Any]:
    """The metrics object, keys in upstream's order; blocking, so run it in a thread."""
    memory = psutil.virtual_memory()
    cpu = sampler.percent()
    disk = os.statvfs("/")
    used = memory.total - memory.available
    return {
        "ts": int(time.time()),
        "cpu_count": cpu_count(),
        "cpu_used_pct": _go_float(round(cpu, 2) if cpu > 0 else cpu),
        "mem_total_mib": memory.total // 1048576,
        "mem_used_mib": used // 1048576,
        "mem_total": memory.total,
        "mem_used": used,
        # psutil's `cached` on Linux is Cached + SReclaimable.
        "mem_cache": memory.cached,
        "disk_used": (disk.f_blocks - disk.f_bavail) * disk.f_bsize,
        "disk_total": disk.f_blocks * disk.f_bsize,
    }


def _go_float(value: float) -> float | int:
    """Go's encoder writes a whole float without `.0`."""
    return int(value) if value.is_integer() else value
