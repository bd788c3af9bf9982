"""Port forwarding: throughput and connect latency through socat and the built-in relay.

Inside a private network namespace (root): a server process on 127.0.0.1,
a daemon forwarding it to 169.254.0.21, and the same measurements made
directly against 127.0.0.1 in the same run as the baseline. Goal (issue 10):
built-in throughput >= 0.5x direct. Then the scan's CPU cost per second
with 1 000 loopback listeners (our /proc scanner vs psutil, which upstream's
gopsutil approach resembles).

    .venv/bin/python -m bench.port_forward [MiB per transfer]
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import psutil

from bench.common import summary
from tests.daemon import Daemon, free_port
from tests.netns import GUEST_IP, NetNamespace, available
from tests.portfwd import guest_hosts_prefix, path_without, wait_connectable

CHUNK = 1 << 20


def serve(port: int) -> None:
    """Server process: per connection, b'u' + N → sink N bytes, reply b'k';
    b'd' + N → send N bytes; b'p' → echo one byte at a time (latency)."""
    listener = socket.create_server(("127.0.0.1", port), backlog=512)
    print("ready", flush=True)

    def handle(conn: socket.socket) -> None:
        with conn:
            mode = conn.recv(1)
            if mode == b"p":
                conn.sendall(mode)
                while b := conn.recv(1):
                    conn.sendall(b)
                return
            head = b""
            while len(head) < 8 and (part := conn.recv(8 - len(head))):
                head += part
            size = int.from_bytes(head.ljust(8, b"\0"), "big")
            buf = bytearray(CHUNK)
            if mode == b"u":
                left = size
                while left > 0:
                    n = conn.recv_into(buf, min(CHUNK, left))
                    if not n:
                        return
                    left -= n
                conn.sendall(b"k")
            elif mode == b"d":
                view = memoryview(buf)
                left = size
                while left > 0:
                    left -= conn.send(view[: min(CHUNK, left)])

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def upload(host: str, port: int, size: int) -> float:
    payload = memoryview(bytearray(os.urandom(CHUNK)))
    with socket.create_connection((host, port)) as c:
        started = time.perf_counter()
        c.sendall(b"u" + size.to_bytes(8, "big"))
        left = size
        while left > 0:
            left -= c.send(payload[: min(CHUNK, left)])
        assert c.recv(1) == b"k"
        return size / (time.perf_counter() - started)


def download(host: str, port: int, size: int) -> float:
    buf = bytearray(CHUNK)
    with socket.create_connection((host, port)) as c:
        started = time.perf_counter()
        c.sendall(b"d" + size.to_bytes(8, "big"))
        left = size
        while left > 0:
            n = c.recv_into(buf)
            assert n
            left -= n
        return size / (time.perf_counter() - started)


def connect_rtt(host: str, port: int) -> float:
    """Connect, send one byte, get it back: what a client waits for its first answer."""
    started = time.perf_counter()
    with socket.create_connection((host, port)) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sendall(b"p")
        assert c.recv(1) == b"p"
    return time.perf_counter() - started


def best(fn: Callable[[str, int, int], float], host: str, port: int, size: int) -> float:
    return max(fn(host, port, size) for _ in range(3))


def cpu_seconds(pids: Callable[[], list[int]]) -> float:
    """User+system CPU of the forwarding processes, their reaped children included."""
    total = 0.0
    for pid in pids():
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


@contextlib.contextmanager
def server(port: int) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.port_forward", "--serve", str(port)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def measure(
    label: str, host: str, port: int, size: int, pids: Callable[[], list[int]] = list
) -> dict[str, float]:
    cpu = cpu_seconds(pids)
    up = best(upload, host, port, size)
    down = best(download, host, port, size)
    # 3 uploads + 3 downloads went through the forwarder.
    cpu_per_gb = (cpu_seconds(pids) - cpu) / (6 * size / 1e9)
    for _ in range(20):
        connect_rtt(host, port)
    lat = summary(
        f"{label}: connect + 1-byte round trip", [connect_rtt(host, port) for _ in range(300)]
    )
    cost = f"   forwarder CPU {cpu_per_gb:.2f} s/GB" if pids is not list else ""
    print(f"{label:<10} upload {up / 1e6:8.0f} MB/s   download {down / 1e6:8.0f} MB/s{cost}")
    return {"up": up, "down": down, "p50_ms": lat["p50_ms"]}


def daemon_pids(daemon: Daemon, comm: str | None) -> Callable[[], list[int]]:
    """The daemon itself (built-in relay) or its socat children."""

    def pids() -> list[int]:
        if comm is None:
            return [daemon.pid]
        return [c.pid for c in psutil.Process(daemon.pid).children() if c.name() == comm]

    return pids


def scan_cost(n: int = 1000, seconds: float = 5.0) -> None:
    from envd.port.scan import Scanner  # noqa: PLC0415

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen()
            socks.append(s)
        for name, fn in (
            ("envd (sock_diag)", Scanner().scan),
            ("envd (/proc/net/tcp)", Scanner(netlink=False).scan),
            ("psutil.net_connections", lambda: psutil.net_connections("tcp")),
        ):
            fn()
            runs = 0
            cpu = time.process_time()
            wall = time.perf_counter()
            while time.perf_counter() - wall < seconds:
                fn()
                runs += 1
            per_scan = (time.process_time() - cpu) / runs
            print(
                f"scan with {n} listeners, {name:<24} {per_scan * 1e3:6.2f} ms CPU per scan "
                f"= {per_scan * 100:5.2f} % of a core at one scan per second"
            )
    finally:
        for s in socks:
            s.close()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
        return
    reason = available()
    if reason:
        print(f"skipped: {reason}")
        return
    size = (int(sys.argv[1]) if len(sys.argv) > 1 else 256) << 20
    with NetNamespace():
        port = free_port()
        with server(port):
            direct = measure("direct", "127.0.0.1", port, size)
            with guest_hosts_prefix() as prefix, Daemon(prefix=prefix) as daemon:
                wait_connectable(port).close()
                via_socat = measure("socat", GUEST_IP, port, size, daemon_pids(daemon, "socat"))
            with path_without("socat") as path, Daemon(env={"PATH": path}) as daemon:
                wait_connectable(port).close()
                builtin = measure("built-in", GUEST_IP, port, size, daemon_pids(daemon, None))
        print("\nratio to direct   upload  download  connect p50")
        for label, r in (("socat", via_socat), ("built-in", builtin)):
            print(
                f"{label:<16} {r['up'] / direct['up']:6.2f}x  {r['down'] / direct['down']:6.2f}x"
                f"   {r['p50_ms'] / direct['p50_ms']:6.2f}x"
            )
        scan_cost()


if __name__ == "__main__":
    main()
