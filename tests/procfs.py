"""What /proc says about a process, for tests that check reaping and leaks."""

from __future__ import annotations

import os
import time
from pathlib import Path


def children(pid: int) -> set[int]:
    """Children of every thread of `pid` (a child belongs to the thread that forked it)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def state(pid: int) -> str:
    """Process state letter (Z = zombie), '' once the pid is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def states_after_reaping(pids: list[int], timeout: float = 30.0) -> list[str]:
    """The pids' states once all are gone (reaped) or `timeout` passed; '' means gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(state(p) for p in pids):
        time.sleep(0.1)
    return [state(p) for p in pids]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
