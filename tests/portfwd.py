"""Helpers for port-forwarding tests and benchmarks (run inside a `NetNamespace`).

- `path_without("socat")`: a PATH under which everything but socat is found,
  for a daemon that must use the built-in forwarder.
- `guest_hosts_prefix()`: runs the daemon in a private mount namespace whose
  `/etc/hosts` has `::1 localhost`, as guest images do; upstream's socat
  connects to `TCP6:localhost:<port>` and this machine's hosts file maps
  localhost to IPv4 only.
- `wait_connectable` / `wait_refused`: poll the forward address.
- `kill_children(daemon)`: the servers a test started through the Process
  service outlive the daemon (as upstream's children do), and would keep the
  test's network namespace alive; kill them before stopping it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

from tests.daemon import Daemon
from tests.netns import GUEST_IP

GUEST_HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"


@contextmanager
def path_without(program: str) -> Iterator[str]:
    """A PATH of symlinks to every executable on the current PATH except `program`."""
    with tempfile.TemporaryDirectory(prefix="envd-path-") as bin_dir:
        os.chmod(bin_dir, 0o755)  # children run as `user` look up ionice/nice here
        for directory in os.environ.get("PATH", "").split(os.pathsep):
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                link = os.path.join(bin_dir, name)
                if name == program or os.path.lexists(link):
                    continue
                target = os.path.join(directory, name)
                if os.access(target, os.X_OK) and not os.path.isdir(target):
                    os.symlink(target, link)
        assert shutil.which(program, path=bin_dir) is None
        yield bin_dir


@contextmanager
def guest_hosts_prefix() -> Iterator[list[str]]:
    """Argv prefix: private mount namespace, guest-like /etc/hosts, then exec the daemon."""
    with tempfile.NamedTemporaryFile("w", prefix="envd-hosts-", delete=False) as f:
        f.write(GUEST_HOSTS)
    try:
        yield [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"',
            f.name,
        ]
    finally:
        os.unlink(f.name)


def try_connect(port: int, host: str = GUEST_IP, timeout: float = 2.0) -> socket.socket | None:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None


def wait_connectable(port: int, within_s: float = 10.0, host: str = GUEST_IP) -> socket.socket:
    deadline = time.monotonic() + within_s
    while True:
        sock = try_connect(port, host)
        if sock is not None:
            return sock
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing accepts on {host}:{port} after {within_s} s")
        time.sleep(0.05)


def wait_refused(port: int, within_s: float, host: str = GUEST_IP) -> float:
    """Seconds until a connect to host:port is refused (AssertionError past `within_s`)."""
    started = time.monotonic()
    while True:
        sock = try_connect(port, host, timeout=1.0)
        elapsed = time.monotonic() - started
        if sock is None:
            return elapsed
        sock.close()
        if elapsed > within_s:
            raise AssertionError(f"{host}:{port} still accepts after {elapsed:.2f} s")
        time.sleep(0.02)


def kill_children(daemon: Daemon) -> None:
    """SIGKILL every descendant of the daemon and wait for them."""
    try:
        children = psutil.Process(daemon.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(children, timeout=5)
