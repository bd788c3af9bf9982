"""A private network namespace for the calling thread, with lo up and the guest address.

`with NetNamespace():` moves the current thread into a new network namespace
(`unshare(CLONE_NEWNET)`), brings `lo` up and adds `169.254.0.21/32` to it.
Everything the thread does inside — sockets it opens, processes it starts
(a daemon started with Popen inherits the namespace) — stays in that
namespace, so no test traffic reaches a real network. On exit the thread
returns to its original namespace; the new one disappears with its last
process and socket (nothing named is left behind to clean up).
Needs root (CAP_SYS_ADMIN) and iproute2's `ip`.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

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

    def _leave(self) -> None:
        if self._original >= 0:
            _check(_libc.setns(self._original, CLONE_NEWNET))
            os.close(self._original)
            self._original = -1

    def __exit__(self, *_exc: object) -> None:
        self._leave()
