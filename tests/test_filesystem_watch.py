"""Watching: the SDK's polling (sync) and streaming (async) watchers, raw WatchDir frames,
the races upstream crashes on, and a burst of 10 000 creations."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from e2b import AsyncSandbox, FilesystemEventType, Sandbox
from e2b.exceptions import NotFoundException, SandboxException

from tests.daemon import Daemon
from tests.fsrpc import call, error, frames, ok, watch

C, W, RM, MV, CH = (
    FilesystemEventType.CREATE,
    FilesystemEventType.WRITE,
    FilesystemEventType.REMOVE,
    FilesystemEventType.RENAME,
    FilesystemEventType.CHMOD,
)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def inotify_fds(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                count += 1
        except OSError:
            pass
    return count


class Poller:
    """Collects a sync WatchHandle's events as (type, name) pairs."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.events: list[Any] = []

    def pairs(self) -> list[tuple[Any, str]]:
        self.events.extend(self.handle.get_new_events())
        return [(e.type, e.name) for e in self.events]

    def until(self, *expected: tuple[Any, str]) -> list[tuple[Any, str]]:
        wait_for(lambda: all(e in self.pairs() for e in expected))
        return self.pairs()


# -- SDK --


def test_sdk_sync_watch_recursive(sandbox: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("old")
    handle = sandbox.files.watch_dir(str(tmp_path), recursive=True, include_entry=True)
    poller = Poller(handle)
    assert re.fullmatch(r"w[a-z0-9]{20}", handle._watcher_id)

    (tmp_path / "e" / "f" / "g").mkdir(parents=True)
    poller.until((C, "e"), (C, "e/f"), (C, "e/f/g"))
    (tmp_path / "e" / "f" / "g" / "inner.txt").write_text("x")
    poller.until((C, "e/f/g/inner.txt"), (W, "e/f/g/inner.txt"))
    os.chmod(tmp_path / "old.txt", 0o600)
    os.rename(tmp_path / "old.txt", tmp_path / "new.txt")
    poller.until((CH, "old.txt"), (MV, "old.txt"), (C, "new.txt"))
    shutil.rmtree(tmp_path / "e")
    pairs = poller.until((RM, "e/f/g/inner.txt"), (RM, "e/f/g"), (RM, "e/f"), (RM, "e"))
    # Children before their directory.
    order = [pairs.index((RM, name)) for name in ("e/f/g/inner.txt", "e/f/g", "e")]
    assert order == sorted(order)

    by_pair = {(e.type, e.name): e for e in poller.events}
    created = by_pair[(C, "new.txt")].entry
    assert created is not None
    assert (created.name, created.path, created.size) == ("new.txt", str(tmp_path / "new.txt"), 3)
    assert by_pair[(MV, "old.txt")].entry is None  # never on RENAME/REMOVE
    assert by_pair[(RM, "e")].entry is None

    handle.stop()
    with pytest.raises(SandboxException):
        handle.get_new_events()


def test_sdk_sync_watch_non_recursive(sandbox: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    handle = sandbox.files.watch_dir(str(tmp_path))
    poller = Poller(handle)
    (tmp_path / "sub" / "deep.txt").write_text("x")
    (tmp_path / "top.txt").write_text("x")
    pairs = poller.until((C, "top.txt"), (W, "top.txt"))
    assert not any(name.startswith("sub/") for _, name in pairs)
    handle.stop()


async def test_sdk_async_watch(async_sandbox: AsyncSandbox, tmp_path: Path) -> None:
    events: list[Any] = []
    exits: list[Any] = []
    handle = await async_sandbox.files.watch_dir(
        str(tmp_path), events.append, on_exit=exits.append, recursive=True, include_entry=True
    )
    await asyncio.to_thread(os.makedirs, tmp_path / "a" / "b")
    await asyncio.to_thread((tmp_path / "a" / "b" / "f.txt").write_text, "hi")

    async def seen(*expected: tuple[Any, str]) -> None:
        for _ in range(1000):
            if all(e in [(x.type, x.name) for x in events] for e in expected):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"missing {expected} in {events}")

    await seen((C, "a"), (C, "a/b"), (C, "a/b/f.txt"))
    # CREATE from the scan of the new directory or from the kernel: either carries the entry.
    entry = next(e.entry for e in events if e.name == "a/b/f.txt" and e.type == C)
    assert entry is not None
    assert entry.path == str(tmp_path / "a" / "b" / "f.txt")
    await handle.stop()
    assert exits == [None]


async def test_sdk_async_watch_errors(async_sandbox: AsyncSandbox, tmp_path: Path) -> None:
    with pytest.raises(NotFoundException):
        await async_sandbox.files.watch_dir(str(tmp_path / "missing"), lambda _e: None)


# -- raw stream --


def test_watch_dir_start_and_keepalive(envd: Daemon, tmp_path: Path) -> None:
    with (
        httpx.Client() as client,
        watch(
            client, envd.url, {"path": str(tmp_path)}, {"Keepalive-Ping-Interval": "1"}
        ) as response,
    ):
        assert response.status_code == 200
        stream = frames(response)
        assert next(stream) == (0, {"start": {}})
        (tmp_path / "x").write_text("")
        assert next(stream) == (0, {"filesystem": {"name": "x", "type": "EVENT_TYPE_CREATE"}})
        started = time.monotonic()
        rest = [f for _, f in [next(stream), next(stream)] if "keepalive" not in f]
        assert time.monotonic() - started >= 0.5  # keepalives only during silence
        assert all(f == {"filesystem": {"name": "x", "type": "EVENT_TYPE_WRITE"}} for f in rest)


@pytest.mark.parametrize("interval", ["0", "-5", "soon"])
def test_watch_dir_bad_keepalive_header_means_default(
    envd: Daemon, tmp_path: Path, interval: str
) -> None:
    with (
        httpx.Client() as client,
        watch(
            client, envd.url, {"path": str(tmp_path)}, {"Keepalive-Ping-Interval": interval}
        ) as response,
    ):
        stream = frames(response)
        assert next(stream) == (0, {"start": {}})
        (tmp_path / "x").mkdir()
        # Not a keepalive storm: the next frame is the event.
        assert next(stream) == (0, {"filesystem": {"name": "x", "type": "EVENT_TYPE_CREATE"}})


def watch_error(envd: Daemon, body: dict[str, Any]) -> dict[str, Any]:
    with httpx.Client() as client, watch(client, envd.url, body) as response:
        assert response.status_code == 200
        got = list(frames(response))
    assert len(got) == 1
    flags, end = got[0]
    assert flags == 2  # end-of-stream frame, no start before it
    error: dict[str, Any] = end["error"]
    return error


def test_watch_dir_validation_errors(envd: Daemon, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert watch_error(envd, {"path": str(missing)}) == {
        "code": "not_found",
        "message": f"path {missing} not found: stat {missing}: no such file or directory",
    }
    (tmp_path / "f").write_text("")
    assert watch_error(envd, {"path": str(tmp_path / "f")}) == {
        "code": "invalid_argument",
        "message": f"path {tmp_path / 'f'} not a directory: %!w(<nil>)",
    }
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "link")
    link = tmp_path / "link"
    assert watch_error(envd, {"path": str(link), "recursive": True}) == {
        "code": "internal",
        "message": f'error adding path {link} to watcher: fsnotify: not a directory: "{link}"',
    }
    assert watch_error(envd, {"path": "~root"})["code"] == "invalid_argument"
    # Same validation for the polling API.
    assert error(envd.url, "CreateWatcher", {"path": str(tmp_path / "f")}) == (
        "invalid_argument",
        f"path {tmp_path / 'f'} not a directory: %!w(<nil>)",
    )


def test_watch_dir_non_recursive_symlink_root_works(envd: Daemon, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "link")
    with (
        httpx.Client() as client,
        watch(client, envd.url, {"path": str(tmp_path / "link")}) as response,
    ):
        stream = frames(response)
        assert next(stream) == (0, {"start": {}})
        (tmp_path / "d" / "n").mkdir()
        assert next(stream)[1]["filesystem"]["name"] == "n"


def test_watch_root_deleted_keeps_stream_open(envd: Daemon, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("")
    with (
        httpx.Client() as client,
        watch(
            client,
            envd.url,
            {"path": str(root), "recursive": True},
            {"Keepalive-Ping-Interval": "1"},
        ) as response,
    ):
        stream = frames(response)
        assert next(stream) == (0, {"start": {}})
        shutil.rmtree(root)
        got = []
        while (frame := next(stream)[1]) != {"keepalive": {}}:
            got.append((frame["filesystem"]["type"], frame["filesystem"]["name"]))
        assert got == [
            ("EVENT_TYPE_REMOVE", "sub/f"),
            ("EVENT_TYPE_REMOVE", "sub"),
            ("EVENT_TYPE_REMOVE", "."),
        ]
        assert next(stream) == (0, {"keepalive": {}})  # still open


def test_watch_root_renamed(envd: Daemon, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with (
        httpx.Client() as client,
        watch(
            client,
            envd.url,
            {"path": str(root), "recursive": True},
            {"Keepalive-Ping-Interval": "1"},
        ) as response,
    ):
        stream = frames(response)
        next(stream)
        os.chmod(root, 0o700)
        assert next(stream)[1] == {"filesystem": {"name": ".", "type": "EVENT_TYPE_CHMOD"}}
        os.rename(root, tmp_path / "elsewhere")
        assert next(stream)[1] == {"filesystem": {"name": ".", "type": "EVENT_TYPE_RENAME"}}
        (tmp_path / "elsewhere" / "later").write_text("")  # no longer watched
        assert next(stream)[1] == {"keepalive": {}}


def test_dir_renamed_within_and_moved_out(envd: Daemon, tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d" / "inner").mkdir(parents=True)
    outside.mkdir()
    with (
        httpx.Client() as client,
        watch(
            client,
            envd.url,
            {"path": str(root), "recursive": True},
            {"Keepalive-Ping-Interval": "1"},
        ) as response,
    ):
        stream = frames(response)
        next(stream)

        def names(count: int) -> list[tuple[str, str]]:
            out: list[tuple[str, str]] = []
            while len(out) < count:
                frame = next(stream)[1]
                if "filesystem" in frame:
                    out.append((frame["filesystem"]["type"][11:], frame["filesystem"]["name"]))
            return out

        os.rename(root / "d", root / "e")
        assert names(2) == [("RENAME", "d"), ("CREATE", "e")]
        (root / "e" / "inner" / "f").write_text("")  # watches were re-labelled
        assert names(1) == [("CREATE", "e/inner/f")]
        os.rename(root / "e", outside / "e")
        assert names(1) == [("RENAME", "e")]
        (outside / "e" / "inner" / "g").write_text("")  # moved out: not reported
        (root / "marker").write_text("")
        assert names(1) == [("CREATE", "marker")]


def test_new_subdirectory_race_does_not_end_stream(envd: Daemon, tmp_path: Path) -> None:
    with (
        httpx.Client() as client,
        watch(client, envd.url, {"path": str(tmp_path), "recursive": True}) as response,
    ):
        stream = frames(response)
        next(stream)
        for i in range(300):  # upstream dies with "no such file or directory" here
            d = tmp_path / f"d{i}"
            d.mkdir()
            (d / "x").mkdir()
            shutil.rmtree(d)
        (tmp_path / "after").write_text("")
        for flags, frame in stream:
            assert flags == 0, frame  # no end-of-stream error
            if frame.get("filesystem", {}).get("name") == "after":
                break


def settled_inotify_fds(pid: int) -> int:
    """Watchers of earlier tests close asynchronously; wait until none is left."""
    wait_for(lambda: inotify_fds(pid) == 0)
    return 0


def test_stream_disconnect_releases_inotify(envd: Daemon, tmp_path: Path) -> None:
    before = settled_inotify_fds(envd.pid)
    with httpx.Client() as client:
        for _ in range(5):
            with watch(client, envd.url, {"path": str(tmp_path), "recursive": True}) as response:
                stream = frames(response)  # kept: dropping it closes the response
                assert next(stream) == (0, {"start": {}})
                assert inotify_fds(envd.pid) == before + 1
    wait_for(lambda: inotify_fds(envd.pid) == before)


# -- polling API --


def test_polling_watcher_lifecycle(envd: Daemon, tmp_path: Path) -> None:
    before = settled_inotify_fds(envd.pid)
    watcher_id = ok(envd.url, "CreateWatcher", {"path": str(tmp_path)})["watcherId"]
    assert re.fullmatch(r"w[a-z0-9]{20}", watcher_id)
    assert inotify_fds(envd.pid) == before + 1
    assert ok(envd.url, "GetWatcherEvents", {"watcherId": watcher_id}) == {}
    (tmp_path / "f").mkdir()
    wait_for(lambda: call(envd.url, "GetWatcherEvents", {"watcherId": watcher_id})[1] != {})
    assert ok(envd.url, "RemoveWatcher", {"watcherId": watcher_id}) == {}
    assert inotify_fds(envd.pid) == before
    for method in ("GetWatcherEvents", "RemoveWatcher"):
        assert error(envd.url, method, {"watcherId": watcher_id}) == (
            "not_found",
            f"watcher with id {watcher_id} not found",
        )
    # Polling does not resolve a user, but the Basic-auth check still runs.
    status, _ = call(envd.url, "GetWatcherEvents", {"watcherId": "wx"}, user="no-such-user")
    assert status == 401


# -- burst --


def burst(directory: Path, count: int) -> None:
    for i in range(count):
        fd = os.open(directory / f"f{i:05d}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)


BURST = 10_000


def test_burst_polling(sandbox: Sandbox, envd: Daemon, tmp_path: Path) -> None:
    rss_before = psutil.Process(envd.pid).memory_info().rss
    handle = sandbox.files.watch_dir(str(tmp_path), recursive=True)
    (tmp_path / "sub").mkdir()
    seen: set[str] = set()

    def poll() -> bool:
        seen.update(e.name for e in handle.get_new_events() if e.type == C)
        return len(seen) >= BURST + 1

    writer = threading.Thread(target=burst, args=(tmp_path / "sub", BURST))
    writer.start()
    writer.join()
    wait_for(poll, timeout=60)
    assert seen == {"sub"} | {f"sub/f{i:05d}" for i in range(BURST)}
    handle.stop()
    growth = psutil.Process(envd.pid).memory_info().rss - rss_before
    assert growth < 200 * 1024 * 1024, growth


def test_burst_stream(envd: Daemon, tmp_path: Path) -> None:
    rss_before = psutil.Process(envd.pid).memory_info().rss
    with (
        httpx.Client() as client,
        watch(
            client, envd.url, {"path": str(tmp_path), "recursive": True, "includeEntry": True}
        ) as response,
    ):
        stream = frames(response)
        assert next(stream) == (0, {"start": {}})
        writer = threading.Thread(target=burst, args=(tmp_path, BURST))
        writer.start()
        created = set()
        for flags, frame in stream:
            assert flags == 0, frame
            event = frame.get("filesystem", {})
            if event.get("type") == "EVENT_TYPE_CREATE":
                created.add(event["name"])
                if len(created) == BURST:
                    break
        writer.join()
    assert created == {f"f{i:05d}" for i in range(BURST)}
    growth = psutil.Process(envd.pid).memory_info().rss - rss_before
    assert growth < 200 * 1024 * 1024, growth
