"""Stepping the guest clock to the host's during `/init`."""

from __future__ import annotations

import time

MAX_BEHIND_NS = 50_000_000  # 50 ms
MAX_AHEAD_NS = 5_000_000_000  # 5 s


def should_set_system_time(sandbox_ns: int, host_ns: int) -> bool:
    """Step when the guest is more than 50 ms behind the host or more than 5 s ahead."""
    return sandbox_ns < host_ns - MAX_BEHIND_NS or sandbox_ns > host_ns + MAX_AHEAD_NS


def set_system_time(ns: int) -> None:
    """CLOCK_REALTIME := ns; raises PermissionError without CAP_SYS_TIME."""
    time.clock_settime_ns(time.CLOCK_REALTIME, ns)
