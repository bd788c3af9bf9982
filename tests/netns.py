"""A private network namespace for the calling thread, with lo up and the guest address.

`with NetNamespace():` moves the current thread into a new network namespace
(`unshare(CLONE_NEWNET)`), brings `lo` up and adds `169.254.0.21/32` to it.
Everything the thread does inside — sockets it opens, processes it starts
(a daemon started with Popen inherits the namespace) — stays in that
namespace, so no test traffic reaches a real network. On exit the thread
returns to its original namespace; the new one disappears with its last
process and socket (nothing named is left behind to clean up).
Needs root (CAP_SYS_ADMIN) and iproute2's `ip`.

`bridge(port)` makes a TCP port inside the namespace reachable on the
original namespace's loopback, for clients whose sockets are opened by
threads we do not control: the e2b SDK's HTTP client runs on its own Rust
runtime threads, which belong to the namespace of the thread that started
them. `outside(fn, ...)` runs such a client on a thread that stays in the
original namespace, so those threads are never born in here. The bridge
relays loopback to loopback; no interface or address is added outside.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

CLONE_NEWNET = 0x40000000
GUEST_IP = "169.254.0.21"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def available() -> str | None:
    """Why a namespace cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed (scripts/setup-system.sh)"
    return None


class NetNamespace:
    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses or (GUEST_IP,)
        self._original = -1
        self._bridges: list[socket.socket] = []
        self._outside: ThreadPoolExecutor | None = None

    def __enter__(self) -> NetNamespace:
        self._original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.unshare(CLONE_NEWNET))
            self.ip("link", "set", "lo", "up")
            for address in self.addresses:
                self.ip("addr", "add", f"{address}/32", "dev", "lo")
        except BaseException:
            self._leave()
            raise
        return self

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def outside(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on a thread in the original namespace and return its result."""
        if self._outside is None:
            original = self._original

            def enter() -> None:
                _check(_libc.setns(original, CLONE_NEWNET))

            self._outside = ThreadPoolExecutor(1, initializer=enter)
        return self._outside.submit(fn, *args, **kwargs).result()

    def bridge(self, port: int) -> int:
        """Port on the original loopback that relays to 127.0.0.1:`port` in here."""
        listener = self.outside(socket.create_server, ("127.0.0.1", 0))
        self._bridges.append(listener)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(1 << 16):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        def accept() -> None:
            # Started from the thread inside the namespace, so it is inside too.
            while True:
                try:
                    outer, _ = listener.accept()
                except OSError:
                    return
                try:
                    inner = socket.create_connection(("127.0.0.1", port))
                except OSError:
                    outer.close()
                    continue
                pumps = [
                    threading.Thread(target=pump, args=pair, daemon=True)
                    for pair in ((outer, inner), (inner, outer))
                ]
                for t in pumps:
                    t.start()
                threading.Thread(
                    target=_close_when_done, args=(pumps, outer, inner), daemon=True
                ).start()

        threading.Thread(target=accept, daemon=True).start()
        return int(listener.getsockname()[1])

    def _leave(self) -> None:
        if self._outside is not None:
            self._outside.shutdown()
            self._outside = None
        for listener in self._bridges:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._bridges.clear()
        if self._original >= 0:
            _check(_libc.setns(self._original, CLONE_NEWNET))
            os.close(self._original)
            self._original = -1

    def __exit__(self, *_exc: object) -> None:
        self._leave()


def _close_when_done(pumps: list[threading.Thread], *socks: socket.socket) -> None:
    for t in pumps:
        t.join()
    for s in socks:
        s.close()
