"""A private cgroup v2 tree for one test: `-cgroup-root` points at it, cleanup removes it.

`mount -t cgroup2` in a temp dir shows the machine's one v2 hierarchy, so the
daemon's root is a fresh subdirectory of it (a hierarchy freeze of the mount
itself would stop everything on the machine). Cleanup thaws and kills what is
left inside, removes the cgroups bottom-up and unmounts. Needs root; a
machine without cgroup2 skips.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


class CgroupFs:
    def __init__(self) -> None:
        self.mount = Path(tempfile.mkdtemp(prefix="envd-cg2-"))
        done = subprocess.run(
            ["mount", "-t", "cgroup2", "none", str(self.mount)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            self.mount.rmdir()
            raise OSError(f"mount -t cgroup2: {done.stderr.strip()}")
        self.root = self.mount / f"envd-test-{uuid.uuid4().hex[:12]}"
        self.root.mkdir()

    @property
    def args(self) -> list[str]:
        """Daemon flags that make it manage this tree."""
        return ["-cgroup-root", str(self.root)]

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def procs(self, *parts: str) -> list[int]:
        """Pids directly in a cgroup."""
        text = (self.path(*parts) / "cgroup.procs").read_text()
        return [int(line) for line in text.split()]

    def all_procs(self, *parts: str) -> list[int]:
        """Pids in a cgroup and every cgroup below it."""
        pids: list[int] = []
        for top, _dirs, files in os.walk(self.path(*parts)):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    pids += [int(x) for x in Path(top, "cgroup.procs").read_text().split()]
        return pids

    def frozen(self, *parts: str) -> bool:
        events = (self.path(*parts) / "cgroup.events").read_text()
        return "frozen 1" in events.splitlines()

    def set_freeze(self, value: int, *parts: str) -> None:
        (self.path(*parts) / "cgroup.freeze").write_text(str(value))

    def close(self) -> None:
        # Deepest first: every cgroup thawed and emptied before its parent goes.
        dirs = sorted(
            (Path(top) for top, _d, _f in os.walk(self.root)),
            key=lambda p: len(p.parts),
            reverse=True,
        )
        for cgroup in dirs:
            with contextlib.suppress(OSError):
                (cgroup / "cgroup.freeze").write_text("0")
            with contextlib.suppress(OSError):
                (cgroup / "cgroup.kill").write_text("1")
        for cgroup in dirs:
            deadline = time.monotonic() + 5
            while True:
                try:
                    cgroup.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
        subprocess.run(["umount", str(self.mount)], check=False)
        with contextlib.suppress(OSError):
            self.mount.rmdir()


@pytest.fixture
def cgroupfs() -> Iterator[CgroupFs]:
    if os.geteuid() != 0:
        pytest.skip("mounting cgroup2 needs root")
    try:
        fs = CgroupFs()
    except OSError as e:
        pytest.skip(f"no cgroup2 here: {e}")
    try:
        yield fs
    finally:
        fs.close()
