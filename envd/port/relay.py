"""The built-in forwarder, for images without socat: the same forward, in the event loop.

Like `socat TCP4-LISTEN:<port>,bind=<ip>,reuseaddr,fork TCP<4|6>:localhost:<port>`:
one IPv4 listener on the guest address per forward, one connection to the
loopback listener per accepted client. Bytes move with `splice(2)` through a
pipe per direction (no copy into Python); where the kernel refuses (not every
socket type supports it) a bounded buffer per direction does the same with
recv/send. Either way a direction holds at most one pipe's or buffer's worth,
and reading stops while it is full: a slow reader slows the writer, as TCP does.

Closing follows socat: when one side ends its stream, the end is passed on
(`shutdown(SHUT_WR)`) and the other direction has 0.5 s (socat's `-t`) to
finish before both sockets are closed; a reset or error on either side
closes both at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger("envd.port.relay")

SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# Per direction. A pipe starts at 256 KiB; one that fills up half-way (bulk
# data) grows to 1 MiB, which costs a third less CPU per byte, but only for
# BULK_PIPES directions at a time, so that many stalled connections cannot pin
# more than ~64 MiB + 256 KiB each of kernel memory.
BUFFER_SIZE = 256 << 10
BULK_PIPE_SIZE = 1 << 20
BULK_PIPES = 64
CLOSE_TIMEOUT_S = 0.5  # socat's default -t
LISTEN_BACKLOG = 128  # socat's listen default is 5; dev servers see bursts
ACCEPTS_PER_WAKEUP = 32
ROUNDS_PER_WAKEUP = 4

_TARGET = {4: (socket.AF_INET, "127.0.0.1"), 6: (socket.AF_INET6, "::1")}
_UNSPLICEABLE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}


def connection_budget() -> int:
    """How many relayed connections the fd limit allows (6 fds each), leaving room."""
    import resource  # noqa: PLC0415  # Linux-only module, only needed here

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft - 512) // 6)


class Slots:
    """A shared cap on relayed connections; full forwards stop accepting until one ends."""

    def __init__(self, limit: int, bulk_pipes: int = BULK_PIPES) -> None:
        self.limit = limit
        self.used = 0
        self.bulk_free = bulk_pipes
        self._paused: list[BuiltinForward] = []

    def take(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def wait(self, forward: BuiltinForward) -> None:
        if forward not in self._paused:
            self._paused.append(forward)

    def give(self) -> None:
        self.used -= 1
        while self._paused and self.used < self.limit:
            self._paused.pop(0).resume_accepting()

    def forget(self, forward: BuiltinForward) -> None:
        with contextlib.suppress(ValueError):
            self._paused.remove(forward)


class _Direction:
    """Bytes from `src` to `dst`: a pipe for splice, else a bounded buffer."""

    def __init__(self, conn: _Connection, src: socket.socket, dst: socket.socket) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.src = src
        self.dst = dst
        self.pending = 0  # bytes taken from src, not yet given to dst
        self.eof = False
        self.done = False
        self.pipe_full = False
        self._reading = False
        self._writing = False
        self._pipe: tuple[int, int] | None = None
        self._buffer: memoryview | None = None
        self._offset = 0
        self._bulk = False
        if conn.splice:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            with contextlib.suppress(OSError):
                fcntl.fcntl(w, F_SETPIPE_SZ, BUFFER_SIZE)
            self._pipe = (r, w)
            self.capacity = fcntl.fcntl(w, F_GETPIPE_SZ)
        else:
            self._use_buffer()

    def _use_buffer(self) -> None:
        self._buffer = memoryview(bytearray(BUFFER_SIZE))
        self.capacity = BUFFER_SIZE

    def start(self) -> None:
        self._update()

    def _update(self) -> None:
        want_read = not self.eof and not self.pipe_full and self.pending < self.capacity
        if self._buffer is not None:
            want_read = want_read and self.pending == 0
        want_write = self.pending > 0
        if want_read != self._reading:
            if want_read:
                self.loop.add_reader(self.src.fileno(), self._on_readable)
            else:
                self.loop.remove_reader(self.src.fileno())
            self._reading = want_read
        if want_write != self._writing:
            if want_write:
                self.loop.add_writer(self.dst.fileno(), self._on_writable)
            else:
                self.loop.remove_writer(self.dst.fileno())
            self._writing = want_write

    def _on_readable(self) -> None:
        try:
            # A few rounds per wake-up: with bulk data the next splice usually
            # has something to move, and that saves an epoll round trip.
            for _ in range(ROUNDS_PER_WAKEUP):
                moved = self._fill()
                if self.pending:
                    self._drain()
                if self.pending * 2 >= self.capacity:
                    self._grow()
                # Stop when src is dry or ended, or dst or the pipe is full.
                if not moved or self.eof or self.pipe_full or self.pending:
                    break
        except OSError as e:
            self.conn.fail(e)
            return
        self._after_io()

    def _on_writable(self) -> None:
        try:
            self._drain()
        except OSError as e:
            self.conn.fail(e)
            return
        self._after_io()

    def _after_io(self) -> None:
        if self.eof and self.pending == 0 and not self.done:
            self.done = True
            self._update()
            with contextlib.suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)
            self.conn.direction_done()
            return
        self._update()

    def _fill(self) -> int:
        """Take what src has (up to the free room); returns the byte count."""
        if self._pipe is not None:
            try:
                n = os.splice(
                    self.src.fileno(),
                    self._pipe[1],
                    self.capacity - self.pending,
                    flags=SPLICE_FLAGS,
                )
            except BlockingIOError:
                # Readable socket, no room: the pipe's slots are full of small
                # segments. Resume after the next drain (pending > 0 then).
                self.pipe_full = self.pending > 0
                return 0
            except OSError as e:
                if e.errno not in _UNSPLICEABLE or self.pending:
                    raise
                self._close_pipe()
                self.conn.splice = False
                self._use_buffer()
                return self._fill()
        else:
            assert self._buffer is not None
            try:
                n = self.src.recv_into(self._buffer)
            except BlockingIOError:
                return 0
            self._offset = 0
        if n == 0:
            self.eof = True
        self.pending += n
        return n

    def _drain(self) -> None:
        while self.pending:
            try:
                if self._pipe is not None:
                    n = os.splice(
                        self._pipe[0], self.dst.fileno(), self.pending, flags=SPLICE_FLAGS
                    )
                else:
                    assert self._buffer is not None
                    n = self.dst.send(self._buffer[self._offset : self._offset + self.pending])
                    self._offset += n
            except BlockingIOError:
                return
            self.pending -= n
            self.pipe_full = False

    def _grow(self) -> None:
        slots = self.conn.slots
        if self._pipe is None or self._bulk or slots.bulk_free <= 0:
            return
        try:
            fcntl.fcntl(self._pipe[1], F_SETPIPE_SZ, BULK_PIPE_SIZE)
        except OSError:
            return  # over fs.pipe-max-size: stay as is
        self.capacity = fcntl.fcntl(self._pipe[1], F_GETPIPE_SZ)
        self.pipe_full = False
        self._bulk = True
        slots.bulk_free -= 1

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            os.close(self._pipe[0])
            os.close(self._pipe[1])
            self._pipe = None
        if self._bulk:
            self._bulk = False
            self.conn.slots.bulk_free += 1

    def close(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.src.fileno())
            self._reading = False
        if self._writing:
            self.loop.remove_writer(self.dst.fileno())
            self._writing = False
        self._close_pipe()
        self._buffer = None


class _Connection:
    """One accepted client and its connection to the loopback listener."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        family: int,
        port: int,
        *,
        slots: Slots,
        on_close: Callable[[_Connection], None],
    ) -> None:
        self.loop = loop
        self.slots = slots
        self.client = client
        self.on_close = on_close
        self.splice = hasattr(os, "splice")
        self.closed = False
        self._directions: list[_Direction] = []
        self._timer: asyncio.TimerHandle | None = None
        af, host = _TARGET[family]
        self.target = socket.socket(af, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.target.setblocking(False)
        client.setblocking(False)
        for s in (client, self.target):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = self.target.connect_ex((host, port))
        if code == 0:
            loop.call_soon(self._connected)
        elif code == errno.EINPROGRESS:
            loop.add_writer(self.target.fileno(), self._connected)
        else:
            loop.call_soon(self.fail, OSError(code, os.strerror(code)))

    def _connected(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(OSError):
            self.loop.remove_writer(self.target.fileno())
        code = self.target.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.fail(OSError(code, os.strerror(code)))
            return
        try:
            self._directions = [
                _Direction(self, self.client, self.target),
                _Direction(self, self.target, self.client),
            ]
        except OSError as e:  # out of fds for the pipes
            self.fail(e)
            return
        for d in self._directions:
            d.start()

    def direction_done(self) -> None:
        if all(d.done for d in self._directions):
            self.close()
        elif self._timer is None:
            self._timer = self.loop.call_later(CLOSE_TIMEOUT_S, self.close)

    def fail(self, error: OSError) -> None:
        if not self.closed:
            log.debug("Forwarded connection failed", extra={"error": str(error)})
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for d in self._directions:
            d.close()
        with contextlib.suppress(OSError, ValueError):
            self.loop.remove_writer(self.target.fileno())
        self.client.close()
        self.target.close()
        self.on_close(self)


class BuiltinForward:
    """One forward: a listener on `<forward_ip>:<port>` relaying to loopback."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        port: int,
        family: int,
        forward_ip: str,
        slots: Slots,
        *,
        listener: socket.socket | None = None,
    ) -> None:
        self.loop = loop
        self.port = port
        self.family = family
        self.slots = slots
        self.connections: set[_Connection] = set()
        self.closed = False
        if listener is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((forward_ip, port))
                listener.listen(LISTEN_BACKLOG)
            except OSError:
                listener.close()
                raise
        listener.setblocking(False)
        self.listener = listener
        self._accepting = False
        self.resume_accepting()

    def resume_accepting(self) -> None:
        if not self.closed and not self._accepting:
            self.loop.add_reader(self.listener.fileno(), self._accept)
            self._accepting = True

    def _pause_accepting(self) -> None:
        if self._accepting:
            self.loop.remove_reader(self.listener.fileno())
            self._accepting = False

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            if not self.slots.take():
                self._pause_accepting()
                self.slots.wait(self)
                return
            try:
                client, _ = self.listener.accept()
            except BlockingIOError:
                self.slots.give()
                return
            except OSError as e:
                self.slots.give()
                # Out of fds: wait for a connection to end rather than spin.
                log.error("Failed to accept a forwarded connection", extra={"error": str(e)})
                self._pause_accepting()
                self.loop.call_later(0.1, self.resume_accepting)
                return
            try:
                conn = _Connection(
                    self.loop,
                    client,
                    self.family,
                    self.port,
                    slots=self.slots,
                    on_close=self._closed,
                )
            except OSError as e:
                client.close()
                self.slots.give()
                log.error("Failed to open a forwarded connection", extra={"error": str(e)})
                continue
            self.connections.add(conn)

    def _closed(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        self.slots.give()

    def detach(self) -> int:
        """Hand the listening socket over (live upgrade): returns its fd, left open and
        inheritable across exec. Relayed connections are closed; the next envd
        accepts new ones on the same socket, so no connect is refused meanwhile."""
        self._pause_accepting()
        self.closed = True
        self.slots.forget(self)
        for conn in list(self.connections):
            conn.close()
        fd = self.listener.detach()
        os.set_inheritable(fd, True)
        return fd

    def close(self) -> None:
        """Stop listening and close every relayed connection (both sides)."""
        if self.closed:
            return
        self._pause_accepting()
        self.closed = True
        self.slots.forget(self)
        self.listener.close()
        for conn in list(self.connections):
            conn.close()
