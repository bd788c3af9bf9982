"""The forward table on its own: scanner parsing, and hand-over/adoption for a live upgrade.

Run in a private network namespace like tests/test_ports.py; the table is
driven directly with listeners (no scan), and forwards are checked by
connecting to them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from envd.port.forwarder import ForwardRecord, ForwardTable
from envd.port.scan import Listener, Scanner, parse_table
from tests.daemon import free_port
from tests.netns import GUEST_IP, NetNamespace, available
from tests.portfwd import path_without

SOCAT = "/usr/bin/socat"

needs_netns = pytest.mark.skipif(available() is not None, reason=str(available()))


def test_parse_table_keeps_loopback_listeners_only() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
        "   uid  timeout inode\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
        "     0        0 1111 1 0000000000000000 100 0 0 10 0\n"
        "   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
        "     0        0 2222 1 0000000000000000 100 0 0 10 0\n"
        "   2: 0100007F:1F92 0100007F:D431 01 00000000:00000000 00:00000000 00000000"
        "     0        0 3333 1 0000000000000000 20 4 30 10 -1\n"
        "   3: 1500FEA9:1F93 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
        "     0        0 4444 1 0000000000000000 100 0 0 10 0\n"
    )
    # Little-endian hosts print 127.0.0.1 as 0100007F.
    assert parse_table(table, "0100007F") == [(0x1F90, 1111)]


def test_scanner_finds_our_listeners_with_owner_and_family() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as v4,
        socket.create_server(("::1", 0), family=socket.AF_INET6) as v6,
        socket.create_server(("0.0.0.0", 0)) as wildcard,
    ):
        found = {(li.port, li.family): li for li in Scanner().scan() if li.pid == os.getpid()}
        assert (v4.getsockname()[1], 4) in found
        assert (v6.getsockname()[1], 6) in found
        assert not any(port == wildcard.getsockname()[1] for port, _ in found)
        li = found[(v4.getsockname()[1], 4)]
        assert li.key == f"{os.getpid()}-{li.port}"


def test_sock_diag_and_proc_tables_agree() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as v4,
        socket.create_server(("::1", 0), family=socket.AF_INET6) as v6,
    ):
        netlink = Scanner()
        by_netlink = {(li.port, li.family, li.pid) for li in netlink.scan()}
        by_proc = {(li.port, li.family, li.pid) for li in Scanner(netlink=False).scan()}
        assert netlink._netlink, "sock_diag refused: the scanner fell back to /proc"
        assert (v4.getsockname()[1], 4, os.getpid()) in by_netlink
        assert (v6.getsockname()[1], 6, os.getpid()) in by_netlink
        # Other processes may open or close listeners between the two scans.
        ours = {entry for entry in by_netlink | by_proc if entry[2] == os.getpid()}
        assert {e for e in by_netlink if e in ours} == {e for e in by_proc if e in ours}


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    with NetNamespace() as ns:
        yield ns


def _echo_once(port: int) -> bytes:
    with socket.create_connection((GUEST_IP, port), timeout=5) as c:
        c.sendall(b"hello")
        c.shutdown(socket.SHUT_WR)
        return c.recv(100)


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(100):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server, int(server.getsockname()[1])


async def _in_thread(fn: Callable[[int], bytes], port: int) -> bytes:
    """`fn(port)` on a thread of its own that ends with the call.

    Not asyncio.to_thread: the loop's executor threads outlive the test, and
    a thread born inside the namespace stays there, breaking later tests.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    def run() -> None:
        try:
            result = fn(port)
        except BaseException as e:
            loop.call_soon_threadsafe(done.set_exception, e)
        else:
            loop.call_soon_threadsafe(done.set_result, result)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        return await done
    finally:
        thread.join()


async def _until(predicate: object, within_s: float = 3.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@needs_netns
async def test_socat_forward_is_handed_over_and_readopted(netns: NetNamespace) -> None:
    if not os.access(SOCAT, os.X_OK):
        pytest.fail("socat is not installed (scripts/setup-system.sh installs it)")
    loop = asyncio.get_running_loop()
    server, port = _echo_server()
    with server:
        old = ForwardTable(loop, socat_path=SOCAT)
        old.sync([Listener(os.getpid() + 1, port, 4, 0)])
        assert await _until(lambda: _connects(port))
        (record,) = old.export()
        assert record.socat_pid > 0
        assert record.key == f"{os.getpid() + 1}-{port}"
        assert old.forwards == {}

        new = ForwardTable(loop, socat_path=SOCAT)
        assert new.adopt([record, ForwardRecord("1-1", 1, 4, 1, socat_pid=2**22 + 12345)]) == 1
        assert _echo_once(port) == b"hello"
        # The same key in the next scan is the adopted forward, not a second socat.
        new.sync([Listener(os.getpid() + 1, port, 4, 0)])
        assert new.forwards[record.key].socat is not None
        assert new.forwards[record.key].socat.pid == record.socat_pid  # type: ignore[union-attr]
        new.sync([])
        assert await _until(lambda: not Path(f"/proc/{record.socat_pid}").exists())
        assert not _connects(port)


@needs_netns
async def test_builtin_forward_is_handed_over_as_a_listening_fd(
    netns: NetNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    server, port = _echo_server()
    with server, path_without("socat") as path:
        monkeypatch.setenv("PATH", path)
        old = ForwardTable(loop)
        old.sync([Listener(7, port, 4, 0)])
        assert old.forwards["7-" + str(port)].builtin is not None
        assert await _in_thread(_echo_once, port) == b"hello"
        (record,) = old.export()
        assert record.listen_fd >= 0
        assert record.socat_pid == 0
        assert os.get_inheritable(record.listen_fd)

        new = ForwardTable(loop)
        assert new.adopt([record]) == 1
        assert await _in_thread(_echo_once, port) == b"hello"
        new.sync([])
        assert not _connects(port)


def _connects(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((GUEST_IP, port)) == 0


@needs_netns
async def test_a_forward_that_cannot_listen_is_kept_as_failed_and_not_retried(
    netns: NetNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    port = free_port()
    with path_without("socat") as path, socket.create_server((GUEST_IP, port)):
        monkeypatch.setenv("PATH", path)
        table = ForwardTable(loop)
        table.sync([Listener(9, port, 4, 0)])
        assert table.forwards[f"9-{port}"].failed
    table.sync([Listener(9, port, 4, 0)])  # address free now, key unchanged
    assert table.forwards[f"9-{port}"].failed
    assert not _connects(port)
    table.sync([Listener(10, port, 4, 0)])  # new owner, new key: a new forward
    assert not table.forwards[f"10-{port}"].failed
    assert _connects(port)
    table.close()
