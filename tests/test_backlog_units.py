"""The output backlog on its own: bounds, order, UTF-8 cuts, accounting."""

from __future__ import annotations

import asyncio

from envd.services.process.backlog import Retention, utf8_start
from envd.services.process.fanout import Fanout


def test_take_returns_everything_in_order_and_empties() -> None:
    retention = Retention(per_stream=1000, total=10_000)
    backlog = retention.backlog()
    backlog.add("stdout", b"a1")
    backlog.add("stderr", b"b1")
    backlog.add("stdout", b"a2")
    backlog.add("stdout", b"a3")
    assert backlog.take() == [("stdout", b"a1"), ("stderr", b"b1"), ("stdout", b"a2a3")]
    assert backlog.take() == []
    assert retention.size == 0
    assert retention.alive == 0
    assert not backlog


def test_per_stream_bound_drops_the_oldest_bytes_of_that_stream_only() -> None:
    retention = Retention(per_stream=10, total=10_000)
    backlog = retention.backlog()
    backlog.add("stderr", b"E")
    for i in range(10):
        backlog.add("stdout", str(i).encode() * 3)
    kept = backlog.take()
    assert kept[0] == ("stderr", b"E")
    stdout = b"".join(d for m, d in kept if m == "stdout")
    assert stdout == b"".join(str(i).encode() * 3 for i in range(10))[-10:]
    assert retention.size == 0


def test_a_chunk_larger_than_the_bound_keeps_its_tail() -> None:
    retention = Retention(per_stream=4, total=100)
    backlog = retention.backlog()
    backlog.add("pty", b"0123456789")
    assert backlog.take() == [("pty", b"6789")]


def test_cuts_never_start_inside_a_utf8_character() -> None:
    euro = "€".encode()  # 3 bytes
    assert utf8_start(euro * 2, 1) == 3
    assert utf8_start(euro * 2, 3) == 3
    assert utf8_start(b"\x80\x80\x80\x80x", 0) == 3  # not UTF-8: at most 3 skipped
    retention = Retention(per_stream=10, total=100)
    backlog = retention.backlog()
    for _ in range(7):
        backlog.add("stdout", euro)
    ((_, kept),) = backlog.take()
    assert kept == euro * 3
    assert retention.size == 0


def test_daemon_wide_bound_evicts_oldest_pieces_across_processes() -> None:
    retention = Retention(per_stream=100_000, total=100_000)
    first, second = retention.backlog(), retention.backlog()
    first.add("stdout", b"x" * 40_000)
    second.add("stdout", b"y" * 40_000)
    second.add("stderr", b"z" * 40_000)
    assert retention.size <= 100_000
    assert first.take() == []
    assert [m for m, _ in second.take()] == ["stdout", "stderr"]
    assert retention.size == 0


def test_disabled_retention_keeps_nothing() -> None:
    for retention in (Retention(per_stream=0), Retention(total=0)):
        backlog = retention.backlog()
        backlog.add("stdout", b"data")
        assert backlog.take() == []
        assert retention.size == 0


def test_taken_pieces_do_not_pile_up_behind_an_old_one() -> None:
    retention = Retention(per_stream=1 << 20, total=1 << 30)
    old = retention.backlog()
    old.add("stdout", b"kept")
    for _ in range(20_000):
        other = retention.backlog()
        other.add("stdout", b"gone")
        other.take()
    assert len(retention._order) < 10_000
    assert old.take() == [("stdout", b"kept")]


async def test_fanout_hands_the_backlog_to_the_next_subscriber_only() -> None:
    loop = asyncio.get_running_loop()
    retention = Retention()
    fanout = Fanout(loop, lambda: None, lambda: None)
    fanout.backlog = retention.backlog()
    fanout.publish("stdout", b"missed ")
    first = fanout.subscribe(30)
    second = fanout.subscribe(30)
    fanout.publish("stdout", b"live")
    assert await first.next() == ("stdout", b"missed live")
    assert await second.next() == ("stdout", b"live")
    # The last one to leave with unsent data puts it back; the one before does not.
    fanout.publish("stdout", b"unsent")
    second.leave()
    first.leave()
    third = fanout.subscribe(30)
    assert await third.next() == ("stdout", b"unsent")
    assert retention.size == 0
