"""Which processes listen on loopback TCP: the kernel's listeners and the owners' fds.

Upstream lists every TCP socket with gopsutil each second, which walks every
fd of every process to find owners. psutil does the same and costs ~30-50 ms
of CPU per scan with 1 000 sockets. We ask sock_diag for LISTEN sockets only
(`sockdiag.py`; `/proc/net/tcp{,6}` where the kernel lacks it) and walk
`/proc/<pid>/fd` only when a listening inode appears that we have not seen;
an inode's owner is remembered while the owner lives.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import struct
from dataclasses import dataclass

from envd.port import sockdiag

TCP_LISTEN = "0A"


def _proc_hex_v4(address: str) -> str:
    # The kernel prints the raw 32-bit word in host byte order.
    (word,) = struct.unpack("=I", socket.inet_pton(socket.AF_INET, address))
    return f"{word:08X}"


def _proc_hex_v6(address: str) -> str:
    words = struct.unpack("=4I", socket.inet_pton(socket.AF_INET6, address))
    return "".join(f"{w:08X}" for w in words)


# Upstream's filter: 127.0.0.1 and ::1 exactly ("localhost" never matches a
# number). Wildcard and other addresses are reachable without a forward.
_LOOPBACK = {
    socket.AF_INET: (4, socket.inet_pton(socket.AF_INET, "127.0.0.1") + bytes(12)),
    socket.AF_INET6: (6, socket.inet_pton(socket.AF_INET6, "::1")),
}
_TABLES = (
    ("net/tcp", 4, _proc_hex_v4("127.0.0.1")),
    ("net/tcp6", 6, _proc_hex_v6("::1")),
)


@dataclass(frozen=True, slots=True)
class Listener:
    """A TCP socket in LISTEN state on 127.0.0.1 or ::1."""

    pid: int  # owner; 0 when no visible process holds it
    port: int
    family: int  # 4 or 6
    inode: int

    @property
    def key(self) -> str:
        """Upstream's key: one forward per owner and port."""
        return f"{self.pid}-{self.port}"


@functools.cache
def _line_pattern(loopback_hex: str) -> re.Pattern[str]:
    # sl, local address, remote address, state, then tx:rx, tr:when, retrnsmt,
    # uid, timeout before the inode. One regex over the whole table is several
    # times faster than splitting a thousand lines.
    return re.compile(
        rf"^ *\d+: {loopback_hex}:([0-9A-F]{{4}}) \S+ {TCP_LISTEN} (?:\S+ +){{5}}(\d+)",
        re.MULTILINE,
    )


def parse_table(text: str, loopback_hex: str) -> list[tuple[int, int]]:
    """(port, inode) of every LISTEN line bound to `loopback_hex`."""
    return [
        (int(port, 16), int(inode)) for port, inode in _line_pattern(loopback_hex).findall(text)
    ]


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except OSError:
        return ""  # no IPv6 in this kernel, or no /proc: nothing listens there


def socket_owners(inodes: set[int], proc: str = "/proc") -> dict[int, int]:
    """inode → the lowest pid holding it (gopsutil's order is arbitrary too)."""
    owners: dict[int, int] = {}
    if not inodes:
        return owners
    wanted = {f"socket:[{i}]": i for i in inodes}
    try:
        pids = sorted(int(name) for name in os.listdir(proc) if name.isdigit())
    except OSError:
        return owners
    for pid in pids:
        try:
            fds = os.scandir(f"{proc}/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to read
        with fds:
            for entry in fds:
                try:
                    target = os.readlink(entry.path)
                except OSError:
                    continue
                inode = wanted.get(target)
                if inode is not None and inode not in owners:
                    owners[inode] = pid
        if len(owners) == len(wanted):
            break
    return owners


class Scanner:
    """One scan per call; remembers owners between calls. Runs off the event loop."""

    def __init__(self, proc: str = "/proc", *, netlink: bool = True) -> None:
        self._proc = proc
        self._netlink = netlink
        self._owners: dict[int, int] = {}  # inode → pid (0: none found)

    def _alive(self, pid: int) -> bool:
        return pid == 0 or os.path.exists(f"{self._proc}/{pid}")

    def _from_netlink(self) -> list[tuple[int, int, int]] | None:
        raw: list[tuple[int, int, int]] = []
        try:
            for af, (family, loopback) in _LOOPBACK.items():
                raw.extend(
                    (port, family, inode)
                    for port, source, inode in sockdiag.listening(af)
                    if source == loopback
                )
        except OSError:
            # No CONFIG_INET_DIAG (or no IPv6 diag module): /proc from now on.
            self._netlink = False
            return None
        return raw

    def _from_proc(self) -> list[tuple[int, int, int]]:
        raw: list[tuple[int, int, int]] = []
        for name, family, loopback in _TABLES:
            table = _read(f"{self._proc}/{name}")
            raw.extend((port, family, inode) for port, inode in parse_table(table, loopback))
        return raw

    def scan(self) -> list[Listener]:
        raw = self._from_netlink() if self._netlink else None
        if raw is None:
            raw = self._from_proc()  # port, family, inode
        current = {inode for _, _, inode in raw}
        # Forget closed sockets; re-resolve those whose owner exited (a server
        # that forked and let its parent go has a new owner, hence a new key).
        alive = {pid for pid in set(self._owners.values()) if self._alive(pid)}
        self._owners = {i: pid for i, pid in self._owners.items() if i in current and pid in alive}
        unknown = current - self._owners.keys()
        if unknown:
            found = socket_owners(unknown, self._proc)
            for inode in unknown:
                self._owners[inode] = found.get(inode, 0)
        return [Listener(self._owners[inode], port, family, inode) for port, family, inode in raw]
