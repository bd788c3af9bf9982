"""A small ext4 file system on a loop device, for `/fsfreeze` tests (never the machine's `/`).

Cleanup always thaws it first: a test that fails while it is frozen would
otherwise leave writers blocked and the unmount hanging.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

FITHAW = 0xC0045878


class LoopFs:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="envd-loopfs-"))
        self.image = self.dir / "image"
        self.mount = self.dir / "mnt"
        self.mount.mkdir()
        with open(self.image, "wb") as f:
            f.truncate(32 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
        done = subprocess.run(
            ["mount", "-o", "loop", str(self.image), str(self.mount)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            shutil.rmtree(self.dir)
            raise OSError(f"mount -o loop: {done.stderr.strip()}")
        self.dir.chmod(0o755)
        self.mount.chmod(0o777)  # commands run as `user`

    @property
    def args(self) -> list[str]:
        return ["-fsfreeze-mount", str(self.mount)]

    def thaw(self) -> None:
        fd = os.open(self.mount, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):  # EINVAL: not frozen
                fcntl.ioctl(fd, FITHAW, 0)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.thaw()
        subprocess.run(["umount", str(self.mount)], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def loopfs() -> Iterator[LoopFs]:
    if os.geteuid() != 0:
        pytest.skip("loop mounts need root")
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is missing")
    try:
        fs = LoopFs()
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no loop mount here: {e}")
    try:
        yield fs
    finally:
        fs.close()
