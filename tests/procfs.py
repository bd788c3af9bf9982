"""What /proc says about a process, for tests that check reaping and leaks."""

from __future__ import annotations

import os
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


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
