"""Output fan-out on its own (envd/services/process/fanout.py), without a process.

The rules (docs/architecture.md): every subscriber gets every chunk read while
it is subscribed, in order, then the exit status; a chunk read with nobody
subscribed is discarded; a queue over QUEUE_LIMIT pauses reading until every
queue is back at RESUME_LEVEL; queued chunks of one member merge up to about
MERGE_LIMIT. tests/test_process_unit.py has the stall cut-off and keepalive.
"""

from __future__ import annotations

import asyncio

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.services.process import fanout
from envd.services.process.fanout import Fanout, Subscriber
from envd.services.process.status import ExitStatus

DONE = ExitStatus(0, True, "exit status 0")
MIB = 1 << 20


class Reading:
    """The pause/resume callbacks a process handle gives its fan-out."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")


@pytest.fixture
def reading() -> Reading:
    return Reading()


@pytest.fixture
async def out(reading: Reading) -> Fanout:
    return Fanout(asyncio.get_running_loop(), reading.pause, reading.resume)


async def drain(subscriber: Subscriber) -> list[object]:
    """Items up to and including the exit status."""
    items: list[object] = []
    while not items or not isinstance(items[-1], ExitStatus):
        items.append(await subscriber.next())
    return items


def joined(items: list[object], member: str) -> bytes:
    return b"".join(i[1] for i in items if isinstance(i, tuple) and i[0] == member)


async def test_every_subscriber_gets_every_chunk_in_order_then_the_status(out: Fanout) -> None:
    first, second = out.subscribe(90), out.subscribe(90)
    out.publish("stdout", b"a")
    out.publish("stderr", b"b")
    out.publish("stdout", b"c")
    out.finish(DONE)
    for subscriber in (first, second):
        # Only chunks of the same member that follow each other can merge.
        assert await drain(subscriber) == [
            ("stdout", b"a"),
            ("stderr", b"b"),
            ("stdout", b"c"),
            DONE,
        ]
    assert out.subscribers == []


async def test_order_across_members_is_kept(out: Fanout) -> None:
    subscriber = out.subscribe(90)
    for i in range(6):
        out.publish("stdout" if i % 2 else "stderr", bytes([i]))
    out.finish(DONE)
    items = await drain(subscriber)
    assert items == [
        ("stderr", b"\x00"),
        ("stdout", b"\x01"),
        ("stderr", b"\x02"),
        ("stdout", b"\x03"),
        ("stderr", b"\x04"),
        ("stdout", b"\x05"),
        DONE,
    ]


async def test_output_with_nobody_subscribed_is_discarded(out: Fanout) -> None:
    out.publish("stdout", b"before")
    subscriber = out.subscribe(90)
    out.publish("stdout", b"after")
    out.finish(DONE)
    assert await drain(subscriber) == [("stdout", b"after"), DONE]


async def test_a_late_subscriber_sees_only_what_follows(out: Fanout) -> None:
    early = out.subscribe(90)
    out.publish("pty", b"1")
    late = out.subscribe(90)
    out.publish("pty", b"2")
    out.finish(DONE)
    assert joined(await drain(early), "pty") == b"12"
    assert joined(await drain(late), "pty") == b"2"


async def test_a_subscriber_that_left_gets_nothing_more(out: Fanout) -> None:
    staying, leaving = out.subscribe(90), out.subscribe(90)
    out.publish("stdout", b"x")
    leaving.leave()
    out.publish("stdout", b"y")
    out.finish(DONE)
    assert out.subscribers == []
    assert joined(await drain(staying), "stdout") == b"xy"
    # The one that left still has what was queued before; it never gets the end.
    assert await leaving.next() == ("stdout", b"x")


async def test_queued_chunks_merge_up_to_the_limit_and_lose_nothing(out: Fanout) -> None:
    subscriber = out.subscribe(90)
    piece = 100 << 10
    data = [bytes([i % 251]) * piece for i in range(20)]
    for chunk in data:
        out.publish("stdout", chunk)
    out.finish(DONE)
    items = await drain(subscriber)
    sizes = [len(i[1]) for i in items if isinstance(i, tuple)]
    assert b"".join(i[1] for i in items if isinstance(i, tuple)) == b"".join(data)
    # A chunk joins the previous one only while that is under the limit.
    assert all(size < fanout.MERGE_LIMIT + piece for size in sizes)
    assert len(sizes) < len(data)


async def test_a_full_queue_pauses_reading_until_it_drains_to_the_resume_level(
    out: Fanout, reading: Reading
) -> None:
    subscriber = out.subscribe(90)
    chunk = b"x" * MIB  # over MERGE_LIMIT: every chunk stays its own item
    count = fanout.QUEUE_LIMIT // MIB + 1
    for _ in range(count - 1):
        out.publish("stdout", chunk)
    assert (reading.calls, subscriber.queued) == ([], fanout.QUEUE_LIMIT)  # at the limit, not over
    out.publish("stdout", chunk)
    assert (reading.calls, out.paused) == (["pause"], True)
    out.publish("stdout", chunk)  # still paused: no second pause
    assert reading.calls == ["pause"]
    taken = 0
    while subscriber.queued > fanout.RESUME_LEVEL:
        assert reading.calls == ["pause"]
        await subscriber.next()
        taken += 1
    assert (reading.calls, out.paused) == (["pause", "resume"], False)
    assert taken == count + 1 - fanout.RESUME_LEVEL // MIB


async def test_the_slowest_queue_decides_when_reading_resumes(
    out: Fanout, reading: Reading
) -> None:
    fast, slow = out.subscribe(90), out.subscribe(90)
    for _ in range(fanout.QUEUE_LIMIT // MIB + 1):
        out.publish("stdout", b"x" * MIB)
    assert reading.calls == ["pause"]
    while fast.queued:
        await fast.next()
    assert reading.calls == ["pause"]  # the slow one is still full
    slow.leave()
    assert (reading.calls, out.paused) == (["pause", "resume"], False)


async def test_fail_ends_one_stream_with_its_error_and_drops_its_queue(out: Fanout) -> None:
    failing, other = out.subscribe(90), out.subscribe(90)
    out.publish("stdout", b"queued")
    failing.fail(ConnectError(Code.DEADLINE_EXCEEDED, "context deadline exceeded"))
    assert out.subscribers == [other]
    with pytest.raises(ConnectError) as info:
        await failing.next()
    assert info.value.code == Code.DEADLINE_EXCEEDED
    assert await other.next() == ("stdout", b"queued")


async def test_close_ends_every_stream_with_the_error(out: Fanout) -> None:
    subscribers = [out.subscribe(90), out.subscribe(90)]
    waiting = asyncio.ensure_future(subscribers[0].next())
    await asyncio.sleep(0)
    out.close(ConnectError(Code.UNAVAILABLE, "shutting down"))
    assert out.subscribers == []
    with pytest.raises(ConnectError):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(ConnectError):
        await subscribers[1].next()


async def test_a_waiting_subscriber_wakes_for_new_data(out: Fanout) -> None:
    subscriber = out.subscribe(90)
    waiting = asyncio.ensure_future(subscriber.next())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    out.publish("stdout", b"now")
    assert await asyncio.wait_for(waiting, 5) == ("stdout", b"now")
