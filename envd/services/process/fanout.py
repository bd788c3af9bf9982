"""Delivery of one process's output to every subscribed stream.

Each subscriber has its own queue, so streams run at their own pace. A
subscriber that falls behind by more than `QUEUE_LIMIT` bytes pauses reading
from the process (back-pressure, as upstream) — but only for `STALL_LIMIT`
seconds if other subscribers are kept waiting by it: then that subscriber is
cut off with an error, never silently skipped, and the others continue. A
subscriber that stays connected therefore never misses a byte.

Output published while nobody is subscribed goes to the process's backlog
(see `backlog.py`), and so does what the last subscriber had queued but not
yet sent when it left; the next subscriber receives that first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.services.process.backlog import Backlog
from envd.services.process.status import ExitStatus

# Queued bytes per subscriber before reading from the process pauses.
QUEUE_LIMIT: Final = 8 << 20
# Reading resumes once the queue has drained to this.
RESUME_LEVEL: Final = QUEUE_LIMIT // 2
# How long one full subscriber may hold up the others.
STALL_LIMIT: Final = 5.0
# Chunks still queued for a subscriber are merged up to this size: a stream
# that falls behind then sends fewer, larger events (per-event cost dominates
# bulk output), far below the 4 MiB Connect message limit.
MERGE_LIMIT: Final = 512 << 10


class _Keepalive:
    __slots__ = ()


KEEPALIVE: Final = _Keepalive()

# A data item is (member, bytes) with member "stdout", "stderr" or "pty".
Data = tuple[str, bytes]
Item = Data | ExitStatus | _Keepalive


class _Chunk:
    """Output of one member queued for a subscriber: pieces joined once, when sent."""

    __slots__ = ("member", "parts", "size")

    def __init__(self, member: str, data: bytes) -> None:
        self.member = member
        self.parts = [data]
        self.size = len(data)

    def take(self) -> bytes:
        parts = self.parts
        return parts[0] if len(parts) == 1 else b"".join(parts)


class Subscriber:
    """One stream's view of the output: data items in order, then the exit status."""

    __slots__ = (
        "_error",
        "_fanout",
        "_items",
        "_keepalive_s",
        "_loop",
        "_waiter",
        "queued",
    )

    def __init__(self, fanout: Fanout, keepalive_s: float) -> None:
        self._fanout = fanout
        self._loop = fanout.loop
        self._items: deque[_Chunk | ExitStatus] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: ConnectError | None = None
        self._keepalive_s = keepalive_s
        self.queued = 0

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def push_data(self, member: str, data: bytes) -> None:
        items = self._items
        if items:
            tail = items[-1]
            if type(tail) is _Chunk and tail.member == member and tail.size < MERGE_LIMIT:
                tail.parts.append(data)
                tail.size += len(data)
                self.queued += len(data)
                return  # the consumer is behind, so it is not waiting
        items.append(_Chunk(member, data))
        self.queued += len(data)
        self._wake()

    def push_end(self, status: ExitStatus) -> None:
        self._items.append(status)
        self._wake()

    def fail(self, error: ConnectError) -> None:
        """End this stream with `error` at its next read (queued items are dropped)."""
        if self._error is None:
            self._error = error
        self._fanout.unsubscribe(self)
        self._wake()

    def leave(self) -> None:
        self._fanout.unsubscribe(self)

    def take_unsent(self) -> list[tuple[str, bytes]]:
        """The data still queued (never handed to the stream); the queue is empty after."""
        unsent = [(i.member, i.take()) for i in self._items if type(i) is _Chunk]
        self._items.clear()
        self.queued = 0
        return unsent

    async def next(self) -> Item:
        """The next item; KEEPALIVE when the keepalive interval passes idle."""
        while True:
            if self._error is not None:
                raise self._error
            if self._items:
                item = self._items.popleft()
                if type(item) is _Chunk:
                    self.queued -= item.size
                    if self._fanout.paused and self.queued <= RESUME_LEVEL:
                        self._fanout.maybe_resume()
                    return (item.member, item.take())
                return item
            waiter = self._waiter = self._loop.create_future()
            # The queue just ran empty, so "now" is when the last data event
            # went out: the keepalive timer counts from there.
            timer = self._loop.call_later(self._keepalive_s, self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._items and self._error is None:
                return KEEPALIVE


class Fanout:
    """The subscribers of one process and the back-pressure on its output."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pause_reading: Callable[[], None],
        resume_reading: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.subscribers: list[Subscriber] = []
        self.paused = False
        self._pause_reading = pause_reading
        self._resume_reading = resume_reading
        self._stall_timer: asyncio.TimerHandle | None = None
        # Output kept while nobody listens; None keeps upstream's discarding.
        self.backlog: Backlog | None = None
        # The only subscriber when the process ended: what it leaves unsent
        # goes back to the backlog that the retained exit keeps.
        self._sole: Subscriber | None = None

    def subscribe(self, keepalive_s: float) -> Subscriber:
        subscriber = Subscriber(self, keepalive_s)
        if self.backlog and not self.subscribers:
            for member, data in self.backlog.take():
                subscriber.push_data(member, data)
        self.subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber is self._sole:
            self._sole = None
            self._keep_unsent(subscriber)
            return
        try:
            self.subscribers.remove(subscriber)
        except ValueError:
            return
        if not self.subscribers:
            self._keep_unsent(subscriber)
        if self.paused:
            self.maybe_resume()

    def _keep_unsent(self, subscriber: Subscriber) -> None:
        # Nobody else received these bytes, so keeping them cannot duplicate any.
        if self.backlog is not None:
            for member, data in subscriber.take_unsent():
                self.backlog.add(member, data)

    def publish(self, member: str, data: bytes) -> None:
        """Queue a chunk for every subscriber; with none, keep it in the backlog."""
        if not self.subscribers:
            if self.backlog is not None:
                self.backlog.add(member, data)
            return
        full = False
        for subscriber in self.subscribers:
            subscriber.push_data(member, data)
            if subscriber.queued > QUEUE_LIMIT:
                full = True
        if full and not self.paused:
            self.paused = True
            self._pause_reading()
            self._stall_timer = self.loop.call_later(STALL_LIMIT, self._on_stall)

    def maybe_resume(self) -> None:
        if all(s.queued <= RESUME_LEVEL for s in self.subscribers):
            self._resume()

    def _cancel_stall(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _resume(self) -> None:
        self._cancel_stall()
        if self.paused:
            self.paused = False
            self._resume_reading()

    def _on_stall(self) -> None:
        self._stall_timer = None
        behind = [s for s in self.subscribers if s.queued > RESUME_LEVEL]
        if len(behind) == len(self.subscribers):
            # Nobody is being held up by anyone else: plain back-pressure, as upstream.
            self._stall_timer = self.loop.call_later(STALL_LIMIT, self._on_stall)
            return
        for subscriber in behind:
            subscriber.fail(
                ConnectError(
                    Code.ABORTED,
                    f"output not consumed for {STALL_LIMIT:g} s while other clients"
                    " of this process were waiting: this stream was detached from the"
                    " process (use Connect to attach again)",
                )
            )
        self._resume()

    def finish(self, status: ExitStatus) -> None:
        """Hand the exit status to every subscriber, after all their data."""
        self._cancel_stall()
        self.paused = False
        for subscriber in self.subscribers:
            subscriber.push_end(status)
        if len(self.subscribers) == 1:
            self._sole = self.subscribers[0]
        self.subscribers.clear()

    def close(self, error: ConnectError) -> None:
        """Daemon shutdown: end every stream."""
        self._cancel_stall()
        self.paused = False
        for subscriber in list(self.subscribers):
            subscriber.fail(error)
