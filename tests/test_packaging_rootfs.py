"""The frozen bundle (make test-rootfs): glibc floor, a real Debian rootfs with
envd as PID 1, and the static variant in an empty chroot.

Needs root, `make overlay` (dist/) and the cached Debian 11 rootfs tarball
(scripts/debian-rootfs.sh).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from envd import ENVD_VERSION, __version__
from tests import sdk_smoke
from tests.daemon import free_port, wait_healthy
from tests.procfs import children, states_after_reaping

REPO = Path(__file__).resolve().parent.parent
DIST = REPO / "dist"
ONEDIR = DIST / "envd"
STATIC = DIST / "envd-static"
OVERLAY = DIST / "envd-overlay.tar.gz"
STATIC_OVERLAY = DIST / "envd-overlay-static.tar.gz"
SUITE = "bullseye"  # glibc 2.31: the oldest userland the bundle promises

pytestmark = [
    pytest.mark.rootfs,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, namespaces)"),
]


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    missing = [p for p in (ONEDIR / "envd", STATIC, OVERLAY, STATIC_OVERLAY) if not p.exists()]
    if missing:
        pytest.fail(f"{missing[0]} is missing: run `make overlay` (or `make test-rootfs`)")


def documented_floor() -> tuple[int, int]:
    text = (REPO / "packaging" / "README.md").read_text()
    match = re.search(r"glibc floor of the onedir bundle is \*\*(\d+)\.(\d+)\*\*", text)
    assert match, "packaging/README.md must state the glibc floor"
    return int(match[1]), int(match[2])


def elf_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    yield path


def glibc_needed(path: Path) -> tuple[int, int] | None:
    """The highest GLIBC_x.y version that the ELF file requires (its version needs)."""
    out = subprocess.run(
        ["readelf", "--version-info", "--wide", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    needs = out.split("Version needs section", 1)
    versions = re.findall(r"Name: GLIBC_(\d+)\.(\d+)", needs[1]) if len(needs) > 1 else []
    return max(((int(a), int(b)) for a, b in versions), default=None)


# --- the bundle as files ------------------------------------------------------


def test_every_elf_in_the_bundle_stays_within_the_documented_glibc_floor() -> None:
    floor = documented_floor()
    # Debian 11 has 2.31, Ubuntu 22.04 2.35: both must be admitted.
    assert floor <= (2, 31)
    files = list(elf_files(ONEDIR))
    assert len(files) > 10  # the executable, libpython, extension modules, ...
    over = {str(p.relative_to(DIST)): v for p in files if (v := glibc_needed(p)) and v > floor}
    assert not over, f"needs glibc newer than {floor}: {over}"


def readelf(*args: str) -> str:
    return subprocess.run(["readelf", *args], check=True, capture_output=True, text=True).stdout


def test_static_variant_carries_its_loader_and_every_library() -> None:
    exe = STATIC / "envd"
    interp = re.search(r"program interpreter: (\S+)\]", readelf("--program-headers", str(exe)))
    assert interp, "no INTERP header"
    # Absolute (the kernel reads it literally): where the static overlay puts it.
    assert interp[1] == "/usr/lib/envd/glibc/ld-linux-x86-64.so.2"
    assert (STATIC / "glibc" / "ld-linux-x86-64.so.2").is_file()
    dynamic = readelf("--dynamic", str(exe))
    assert "(RPATH)" in dynamic
    assert "Library rpath: [/usr/lib/envd/glibc:/usr/lib/envd/_internal]" in dynamic
    assert "(RUNPATH)" not in dynamic  # RUNPATH would not reach dlopen'd NSS modules
    carried = {p.name for p in STATIC.rglob("*")}
    for name in ("libc.so.6", "libnss_files.so.2", "libgcc_s.so.1"):
        assert name in carried
    missing = {
        str(path.relative_to(DIST)): needed - carried
        for path in elf_files(STATIC)
        if (needed := set(re.findall(r"\(NEEDED\).*\[(.+)\]", readelf("--dynamic", str(path)))))
        - carried
    }
    assert not missing, f"needed but not carried: {missing}"


def static_in_empty_chroot(root: Path, *args: str) -> str:
    return subprocess.run(
        ["chroot", str(root), "/usr/bin/envd", *args],
        check=True,
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin")},
    ).stdout


@pytest.mark.parametrize("flag", ["-version", "-package-version"])
def test_version_flags(flag: str, empty_root: Path) -> None:
    expected = {"-version": ENVD_VERSION, "-package-version": __version__}[flag] + "\n"
    onedir = subprocess.run(
        [str(ONEDIR / "envd"), flag], check=True, capture_output=True, text=True
    )
    assert onedir.stdout == expected
    # The static variant's loader path is absolute: it runs where the overlay puts it.
    assert static_in_empty_chroot(empty_root, flag) == expected


def test_overlay_layout() -> None:
    with tarfile.open(OVERLAY) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    envd = members["usr/bin/envd"]
    assert envd.issym()
    assert envd.linkname == "/usr/lib/envd/envd"
    assert members["usr/lib/envd/envd"].isfile()
    assert members["usr/lib/envd/envd"].mode & 0o111
    wants = members["etc/systemd/system/multi-user.target.wants/envd.service"]
    assert wants.issym()
    assert wants.linkname == "/etc/systemd/system/envd.service"
    for name in ("etc/systemd/system/envd.service", "etc/systemd/system-preset/80-envd.preset"):
        assert members[name].isfile()
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    # The static overlay: the same layout, with the carried glibc beside the bundle.
    with tarfile.open(STATIC_OVERLAY) as tar:
        static = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    assert static["usr/bin/envd"].issym()
    assert static["usr/bin/envd"].linkname == "/usr/lib/envd/envd"
    assert static["usr/lib/envd/envd"].mode & 0o111
    assert static["usr/lib/envd/glibc/ld-linux-x86-64.so.2"].isfile()
    assert set(members) <= set(static)


# --- running it in a root file system -----------------------------------------


def debian_rootfs(dest: Path) -> None:
    tarball = subprocess.run(
        [str(REPO / "scripts" / "debian-rootfs.sh"), SUITE],
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    ).stdout.strip()
    subprocess.run(["tar", "-C", str(dest), "-xf", tarball], check=True)


class Booted:
    """`/usr/bin/envd` as PID 1 of fresh PID and mount namespaces, chrooted into ROOT."""

    def __init__(self, root: Path, *args: str, mount_dev: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root.parent / f"envd-{self.port}.log"
        self.log = self.log_path.open("wb")
        mounts = 'mount -t proc proc "$0/proc"'
        if mount_dev:
            mounts += '; mount --rbind /dev "$0/dev"'
        command = ["/usr/bin/envd", *args]
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f'{mounts}; exec chroot "$0" "$@"',
                str(root),
                *command,
                "-isnotfc",
                "-verbose",
                "-port",
                str(self.port),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(self.url, self.proc, 60.0, self.output)
        except RuntimeError:
            self.stop()
            raise
        (self.init,) = children(self.proc.pid)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            for pid in children(self.proc.pid):  # PID 1: the whole namespace goes with it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rootfs") / "root"
    root.mkdir()
    debian_rootfs(root)
    # What a template build does: extract the overlay at /.
    subprocess.run(["tar", "-C", str(root), "-xzf", str(OVERLAY)], check=True)
    subprocess.run(
        ["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", "user"],
        check=True,
    )
    return root


@pytest.fixture(scope="module")
def booted(rootfs: Path) -> Iterator[Booted]:
    envd = Booted(rootfs)
    yield envd
    envd.stop()


def test_rootfs_envd_is_pid1_and_serves_from_its_child(booted: Booted) -> None:
    cmdline = Path(f"/proc/{booted.init}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0] == b"/usr/bin/envd"
    (daemon,) = children(booted.init)
    assert Path(f"/proc/{daemon}/cmdline").read_bytes().split(b"\0")[0] == b"/usr/bin/envd"
    assert (Path(f"/proc/{daemon}/root").resolve()) == Path(f"/proc/{booted.init}/root").resolve()


def test_rootfs_orphans_are_reaped(booted: Booted) -> None:
    (daemon,) = children(booted.init)
    # The rootfs's own sh, in envd's namespaces; its background children are
    # orphaned as it exits and handed to PID 1.
    subprocess.run(
        [
            "nsenter",
            "-t",
            str(booted.init),
            "-p",
            "-m",
            "-r",
            "--",
            "/bin/sh",
            "-c",
            "for i in 1 2 3; do sleep 1 & done",
        ],
        check=True,
        timeout=30,
    )
    orphans = [p for p in children(booted.init) if p != daemon]
    assert len(orphans) == 3
    assert states_after_reaping(orphans) == ["", "", ""], "orphans left as zombies"
    assert children(booted.init) == {daemon}


def test_rootfs_sdk_runs_a_command_as_user(booted: Booted) -> None:
    sdk_smoke.run_as_user(booted.url)


def test_rootfs_sdk_pty(booted: Booted) -> None:
    sdk_smoke.pty_echo(booted.url)


def test_rootfs_sdk_files_write_read_watch(booted: Booted) -> None:
    sdk_smoke.files_write_read_watch(booted.url)


def test_rootfs_children_get_the_original_environment(booted: Booted) -> None:
    sdk_smoke.child_environment_is_clean(booted.url)


def test_rootfs_sigterm_ends_envd_cleanly(rootfs: Path) -> None:
    envd = Booted(rootfs)
    try:
        os.kill(envd.init, signal.SIGTERM)
        assert envd.proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        envd.stop()


# --- the static variant where there is no userland at all ---------------------


@pytest.fixture
def empty_root(tmp_path: Path) -> Path:
    """A root with nothing but the static overlay's envd: no libc, no shell, no /tmp."""
    root = tmp_path / "empty"
    root.mkdir()
    (root / "proc").mkdir()
    subprocess.run(
        ["tar", "-C", str(root), "-xzf", str(STATIC_OVERLAY), "./usr/bin/envd", "./usr/lib/envd"],
        check=True,
    )
    return root


def test_static_variant_serves_in_an_empty_chroot(empty_root: Path) -> None:
    assert sorted(p.name for p in empty_root.iterdir()) == ["proc", "usr"]
    assert sorted(p.name for p in (empty_root / "usr").iterdir()) == ["bin", "lib"]
    envd = Booted(empty_root, mount_dev=False)
    try:
        with urllib.request.urlopen(envd.url + "/health", timeout=5) as r:
            assert r.status == 204
        # envd's own init is PID 1 (no loader process in between) and serves
        # from its child.
        assert Path(f"/proc/{envd.init}/cmdline").read_bytes().startswith(b"/usr/bin/envd\0")
        (daemon,) = children(envd.init)
        # Orphans: the host's sh in envd's PID namespace (the root has no shell).
        subprocess.run(
            ["nsenter", "-t", str(envd.init), "-p", "--", "/bin/sh", "-c",
             "for i in 1 2 3; do sleep 2 & done"],
            check=True,
            timeout=30,
        )  # fmt: skip
        orphans = [p for p in children(envd.init) if p != daemon]
        assert len(orphans) == 3
        assert states_after_reaping(orphans) == ["", "", ""], "orphans left as zombies"
        assert children(envd.init) == {daemon}
        os.kill(envd.init, signal.SIGTERM)
        assert envd.proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        envd.stop()


# --- the unit file under a real systemd (systemd-nspawn --boot) ---------------


def in_container(init: int, *command: str) -> str:
    return subprocess.run(
        ["nsenter", "-t", str(init), "-a", *command],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


def envd_pids(init: int) -> list[int]:
    return [
        p
        for p in children(init)
        if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"/usr/bin/envd\0")
    ]


@pytest.fixture(scope="module")
def systemd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if subprocess.run(["sh", "-c", "command -v systemd-nspawn"], check=False).returncode:
        pytest.skip("systemd-nspawn is missing (make rootfs-tools installs it)")
    root = tmp_path_factory.mktemp("systemd") / "root"
    root.mkdir()
    tarball = subprocess.run(
        [str(REPO / "scripts" / "debian-rootfs.sh"), SUITE, "systemd,systemd-sysv"],
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    ).stdout.strip()
    subprocess.run(["tar", "-C", str(root), "-xf", tarball], check=True)
    subprocess.run(["tar", "-C", str(root), "-xzf", str(OVERLAY)], check=True)
    return root


def test_systemd_boots_enables_and_restarts_envd(systemd_root: Path) -> None:
    port = free_port()
    # The test's only change to the unit: outside Firecracker, on a free port.
    dropin = systemd_root / "etc/systemd/system/envd.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "test.conf").write_text(
        f"[Service]\nExecStart=\nExecStart=/usr/bin/envd -isnotfc -port {port}\n"
    )
    log = (systemd_root.parent / "nspawn.log").open("wb")
    nspawn = subprocess.Popen(
        [
            "systemd-nspawn",
            "--quiet",
            f"--directory={systemd_root}",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, nspawn, 120.0)
        (init,) = children(nspawn.pid)
        assert in_container(init, "systemctl", "is-enabled", "envd") == "enabled"
        assert in_container(init, "systemctl", "is-active", "envd") == "active"
        (envd,) = envd_pids(init)
        nice = int(Path(f"/proc/{envd}/stat").read_text().rsplit(")", 1)[1].split()[16])
        assert nice == -20
        ionice = subprocess.run(
            ["ionice", "-p", str(envd)], check=True, capture_output=True, text=True
        )
        assert ionice.stdout.strip() == "realtime: prio 4"
        # Restart=always: a killed envd comes back.
        os.kill(envd, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and envd_pids(init) in ([], [envd]):
            time.sleep(0.1)
        assert envd_pids(init) not in ([], [envd])
        wait_healthy(url, nspawn, 120.0)
    finally:
        nspawn.terminate()  # a clean power-off of the container
        try:
            nspawn.wait(timeout=60)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait()
        log.close()
