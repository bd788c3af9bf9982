"""Port forwarding (issue 10): loopback listeners reachable on 169.254.0.21, via socat or built-in.

Every daemon here runs in a private network namespace made by the test
(`tests/netns.py`: lo up, 169.254.0.21/32 on it), servers are started through
the Process service with the SDK, and every connection is made from inside
that namespace: no traffic leaves it. Each forwarding test runs twice: with
socat installed (upstream's forwarder; the daemon sees a guest-like
/etc/hosts with `::1 localhost`) and with socat hidden from PATH (the
built-in relay).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2b import CommandHandle, Sandbox
from e2b.connection_config import ConnectionConfig
from packaging.version import Version

from envd import ENVD_VERSION
from tests.daemon import Daemon, free_port, wait_until
from tests.netns import GUEST_IP, NetNamespace, available
from tests.portfwd import (
    guest_hosts_prefix,
    kill_children,
    path_without,
    try_connect,
    wait_connectable,
)

ECHO_SERVER = str(Path(__file__).with_name("echo_server.py"))
SOCAT = "/usr/bin/socat"
# The servers run as `user` (root's login shell on a development machine may
# run anything); the test venv's interpreter can live under /root.
SERVER_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3"
OTHER_IP = "169.254.0.22"

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


@dataclass
class Guest:
    """A daemon in its own network namespace, and the SDK talking to it from inside."""

    ns: NetNamespace
    daemon: Daemon
    sandbox: Sandbox
    forwarder: str  # "socat" or "builtin"

    def serve(self, host: str, port: int) -> CommandHandle:
        handle = _start_server(self.ns, self.sandbox, host, port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        assert wait_until(lambda: _accepts(family, host, port)), f"server on {host}:{port}"
        return handle

    def children(self, comm: str) -> list[int]:
        """Pids of the daemon's children named `comm` (zombies included)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid == self.daemon.pid and name == comm:
                found.append(int(entry))
        return found

    def log_lines(self, text: str) -> list[str]:
        return [line for line in self.daemon.output().splitlines() if text in line]


def _start_server(ns: NetNamespace, sandbox: Sandbox, host: str, port: int) -> CommandHandle:
    """The echo server, started through the Process service by the SDK (run outside)."""
    command = f"exec {SERVER_PYTHON} {ECHO_SERVER} {host} {port}"
    return ns.outside(sandbox.commands.run, command, background=True, user="user")


def _sdk(ns: NetNamespace, daemon: Daemon) -> Sandbox:
    """The SDK in debug mode, outside the namespace, reaching the daemon through a bridge."""
    url = f"http://127.0.0.1:{ns.bridge(daemon.port)}"
    return ns.outside(
        Sandbox,
        sandbox_id="debug",
        sandbox_domain=None,
        envd_version=Version(ENVD_VERSION),
        envd_access_token=None,
        traffic_access_token=None,
        connection_config=ConnectionConfig(debug=True, sandbox_url=url),
    )


def _accepts(family: int, host: str, port: int) -> bool:
    with socket.socket(family) as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(params=["socat", "builtin"])
def guest(request: pytest.FixtureRequest) -> Iterator[Guest]:
    forwarder = str(request.param)
    if forwarder == "socat" and not os.access(SOCAT, os.X_OK):
        pytest.fail("socat is not installed (scripts/setup-system.sh installs it)")
    with ExitStack() as stack:
        ns = stack.enter_context(NetNamespace(GUEST_IP, OTHER_IP))
        if forwarder == "socat":
            daemon = Daemon("-verbose", prefix=stack.enter_context(guest_hosts_prefix()))
        else:
            path = stack.enter_context(path_without("socat"))
            daemon = Daemon("-verbose", env={"PATH": path})
        stack.enter_context(daemon)
        stack.callback(kill_children, daemon)
        yield Guest(ns, daemon, _sdk(ns, daemon), forwarder)


def _exchange(sock: socket.socket, payload: bytes) -> bytes:
    """Send everything while reading the echo concurrently; returns what came back."""
    received = bytearray()
    errors: list[OSError] = []

    def read() -> None:
        try:
            while len(received) < len(payload):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return
                received.extend(chunk)
        except OSError as e:
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        sock.sendall(payload)
    finally:
        reader.join(60)
    if errors:
        raise errors[0]
    return bytes(received)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_loopback_listener_is_forwarded_intact_and_removed(guest: Guest, host: str) -> None:
    port = free_port()
    server = guest.serve(host, port)
    first = wait_connectable(port, within_s=5)
    with first:
        first.settimeout(60)
        payload = os.urandom(48 << 20)
        assert _exchange(first, payload) == payload

    def one(i: int) -> str | None:
        data = os.urandom(256 << 10) + i.to_bytes(4, "big")
        try:
            with socket.create_connection((GUEST_IP, port), timeout=30) as c:
                return None if _exchange(c, data) == data else f"{i}: bytes differ"
        except OSError as e:
            return f"{i}: {e!r}"

    # socat listens with its default backlog of 5: a burst of more concurrent
    # connects overflows the accept queue and some are reset (upstream too).
    with ThreadPoolExecutor(4 if guest.forwarder == "socat" else 32) as pool:
        failures = [f for f in pool.map(one, range(96)) if f]
    assert not failures, failures

    # Only loopback was forwarded: the other address on lo has no listener.
    assert try_connect(port, OTHER_IP) is None

    # A connection open through the forward when the server goes is closed too.
    idle = socket.create_connection((GUEST_IP, port), timeout=10)
    assert _exchange(idle, b"ping") == b"ping"
    assert guest.ns.outside(server.kill)
    with idle, suppress(ConnectionResetError):
        assert idle.recv(1) == b""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    assert wait_until(lambda: not _accepts(family, host, port)), "server still listening"
    gone_at = time.monotonic()
    assert wait_until(lambda: try_connect(port, timeout=1) is None, timeout=2.0), (
        f"forward still accepting {time.monotonic() - gone_at:.2f} s after the server stopped"
    )
    if guest.forwarder == "socat":
        # Killed with its group and reaped: no socat child, not even a zombie.
        assert wait_until(lambda: not guest.children("socat"), timeout=2.0)


@pytest.mark.parametrize("guest", ["socat"], indirect=True)
def test_socat_runs_with_upstreams_command_line_in_its_own_group(guest: Guest) -> None:
    port = free_port()
    server = guest.serve("::1", port)
    wait_connectable(port, within_s=5).close()
    (pid,) = guest.children("socat")
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in argv] == [
        "socat",
        "-d",
        "-d",
        "-d",
        f"TCP4-LISTEN:{port},bind={GUEST_IP},reuseaddr,fork",
        f"TCP6:localhost:{port}",
    ]
    assert os.getpgid(pid) == pid
    # Shutting the daemon down takes its forwards with it (socat groups killed, reaped);
    # the server, like any process the daemon started, keeps running.
    try:
        guest.daemon.stop()
        assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=5.0)
        assert try_connect(port) is None
        assert Path(f"/proc/{server.pid}").exists()
    finally:
        os.kill(server.pid, signal.SIGKILL)


def test_wildcard_and_other_addresses_are_not_forwarded(guest: Guest) -> None:
    wildcard, other = free_port(), free_port()
    guest.serve("0.0.0.0", wildcard)
    guest.serve(OTHER_IP, other)
    loopback = free_port()
    guest.serve("127.0.0.1", loopback)
    wait_connectable(loopback, within_s=5).close()  # a scan has run since all three listen
    time.sleep(1.2)  # and another one
    detected = guest.log_lines("Detected new opened port")
    assert any(f'"port":{loopback},' in line for line in detected)
    assert not any(f'"port":{wildcard},' in line or f'"port":{other},' in line for line in detected)
    assert try_connect(other) is None  # nothing listens on 169.254.0.21:<other>
    if guest.forwarder == "socat":
        assert len(guest.children("socat")) == 1


def test_failed_forward_is_not_retried_while_its_key_persists(guest: Guest) -> None:
    port = free_port()
    # Someone else holds the forward address: the forward cannot bind.
    blocker = socket.create_server((GUEST_IP, port))
    try:
        guest.serve("127.0.0.1", port)
        expected = (
            "Port forwarding socat process exited"
            if guest.forwarder == "socat"
            else "the built-in forwarder could not listen"
        )
        assert wait_until(lambda: guest.log_lines(expected), timeout=5.0), guest.daemon.output()
    finally:
        blocker.close()
    time.sleep(2.5)  # two more scans with the key still there and the address free
    assert try_connect(port) is None
    assert len([li for li in guest.log_lines("Detected new opened port") if f":{port}," in li]) == 1
    if guest.forwarder == "socat":
        assert guest.children("socat") == []
        assert len(guest.log_lines("About to start port forwarding")) == 1


def test_envd_own_port_is_never_forwarded(guest: Guest) -> None:
    port = free_port()
    guest.serve("127.0.0.1", port)
    wait_connectable(port, within_s=5).close()
    detected = guest.log_lines("Detected new opened port")
    assert not any(f'"port":{guest.daemon.port},' in line for line in detected)
    # The built-in relay's own listener (on the guest address) is not a loopback listener.
    assert all(f'"pid":{guest.daemon.pid},' not in line for line in detected)


def test_forward_ip_flag_moves_the_forward() -> None:
    with (
        NetNamespace(GUEST_IP, OTHER_IP) as ns,
        path_without("socat") as path,
        Daemon("-verbose", "-forward-ip", OTHER_IP, env={"PATH": path}) as daemon,
    ):
        try:
            sandbox = _sdk(ns, daemon)
            port = free_port()
            _start_server(ns, sandbox, "127.0.0.1", port)
            with wait_connectable(port, within_s=5, host=OTHER_IP) as c:
                c.settimeout(10)
                assert _exchange(c, b"ping") == b"ping"
            assert try_connect(port) is None
        finally:
            kill_children(daemon)


@pytest.mark.parametrize("value", ["", "localhost", "::1", "169.254.0.300"])
def test_forward_ip_must_be_ipv4(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "envd", "-forward-ip", value, "-port", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"forward ip {value!r} is not an IPv4 address" in result.stderr


def test_socat_joins_the_given_cgroup_before_exec() -> None:
    """The `socats` cgroup hand-off: socat's pid is in the directory given to spawn."""
    from envd.port import socat  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as root:
        if subprocess.run(["mount", "-t", "cgroup2", "none", root], check=False).returncode:
            pytest.skip("cannot mount cgroup2 here")
        cgroup = os.path.join(root, f"envd-test-socats-{os.getpid()}")
        try:
            os.mkdir(cgroup)
            port = free_port()
            pid = socat.spawn(SOCAT, socat.socat_argv(port, 4, "127.0.0.1"), cgroup)
            try:
                assert wait_until(
                    lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(SOCAT.encode())
                )
                procs = Path(cgroup, "cgroup.procs").read_text().split()
                assert str(pid) in procs
                assert os.getpgid(pid) == pid
            finally:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            assert wait_until(lambda: not Path(cgroup, "cgroup.procs").read_text().split())
        finally:
            if os.path.isdir(cgroup):
                os.rmdir(cgroup)
            subprocess.run(["umount", root], check=True)


def test_no_forward_is_attempted_where_the_forward_address_does_not_exist() -> None:
    # The namespace has only 169.254.0.22: 169.254.0.21 is not an address here.
    with NetNamespace(OTHER_IP) as ns, Daemon("-verbose") as daemon:
        try:
            sandbox = _sdk(ns, daemon)
            port = free_port()
            _start_server(ns, sandbox, "127.0.0.1", port)
            assert wait_until(
                lambda: any(
                    f'"port":{port},' in line and "forward address is not assigned" in line
                    for line in daemon.output().splitlines()
                ),
                timeout=5.0,
            ), daemon.output()
            assert "About to start port forwarding" not in daemon.output()
        finally:
            kill_children(daemon)
