"""What a watcher sees when `POST /files` writes: exactly upstream's in-place
sequence (spec files-http §3.7, filesystem §7.3), for raw and multipart
uploads, with and without metadata, at the top of a recursive watch and in
new subdirectories, also with both cores busy; through raw WatchDir frames,
CreateWatcher/GetWatcherEvents and the SDK's watch_dir.

The kernel merges identical consecutive events that are still unread, so a
truncate followed by a write may arrive as one WRITE or two: runs of one
event are compared collapsed (as upstream, spec filesystem §7.3).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import Sandbox

from tests.daemon import Daemon
from tests.fsrpc import frames, ok, watch

Pairs = list[tuple[str, str]]
MARKER = "zz-marker"
NEW = ["CREATE", "CHMOD", "WRITE"]
OVERWRITE = ["CHMOD", "WRITE"]


def collapse(pairs: Pairs) -> Pairs:
    out: Pairs = []
    for pair in pairs:
        if not out or out[-1] != pair:
            out.append(pair)
    return out


def upload(url: str, path: str, data: bytes, *, multipart: bool, metadata: bool) -> None:
    headers = {"X-Metadata-Kind": "test"} if metadata else {}
    if multipart:
        r = httpx.post(
            url + "/files", params={"path": path}, files={"file": ("f", data)}, headers=headers
        )
    else:
        headers["Content-Type"] = "application/octet-stream"
        r = httpx.post(url + "/files", params={"path": path}, content=data, headers=headers)
    assert r.status_code == 200, r.text


def stream_events(envd: Daemon, root: Path, action: Callable[[], None]) -> Pairs:
    """Events of a recursive WatchDir of `root` caused by `action`, up to a marker."""
    out: Pairs = []
    with (
        httpx.Client() as client,
        watch(client, envd.url, {"path": str(root), "recursive": True}) as response,
    ):
        stream = frames(response)
        assert next(stream) == (0, {"start": {}})
        action()
        (root / MARKER).mkdir()
        for flags, frame in stream:
            assert flags == 0, frame
            event = frame.get("filesystem")
            if event is None:
                continue
            if event["name"] == MARKER:
                return out
            out.append((event["type"].removeprefix("EVENT_TYPE_"), event["name"]))
    raise AssertionError(f"stream ended early: {out}")


def polled_events(envd: Daemon, root: Path, action: Callable[[], None]) -> Pairs:
    watcher = ok(envd.url, "CreateWatcher", {"path": str(root), "recursive": True})["watcherId"]
    out: Pairs = []
    try:
        action()
        (root / MARKER).mkdir()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            events = ok(envd.url, "GetWatcherEvents", {"watcherId": watcher}).get("events", [])
            for event in events:
                if event["name"] == MARKER:
                    return out
                out.append((event["type"].removeprefix("EVENT_TYPE_"), event["name"]))
            time.sleep(0.05)
    finally:
        ok(envd.url, "RemoveWatcher", {"watcherId": watcher})
    raise AssertionError(f"marker never seen: {out}")


def expected(name: str, ops: list[str], metadata: bool) -> Pairs:
    # Setting a `user.e2b.` attribute is one more IN_ATTRIB at the end.
    return [(op, name) for op in ops + (["CHMOD"] if metadata else [])]


def dirs_created(*names: str) -> Pairs:
    # ensure_dirs: mkdir then chown, each level.
    return [pair for name in names for pair in (("CREATE", name), ("CHMOD", name))]


COLLECTORS = {"stream": stream_events, "poll": polled_events}


@pytest.mark.parametrize("collector", COLLECTORS)
@pytest.mark.parametrize("multipart", [False, True], ids=["raw", "multipart"])
@pytest.mark.parametrize("metadata", [False, True], ids=["plain", "metadata"])
def test_new_file_and_overwrite_at_the_top(
    envd: Daemon, tmp_path: Path, collector: str, multipart: bool, metadata: bool
) -> None:
    target = str(tmp_path / "f.txt")
    collect = COLLECTORS[collector]

    def new() -> None:
        upload(envd.url, target, b"hello", multipart=multipart, metadata=metadata)

    assert collapse(collect(envd, tmp_path, new)) == expected("f.txt", NEW, metadata)
    os.rmdir(tmp_path / MARKER)

    def overwrite() -> None:
        upload(envd.url, target, b"replaced", multipart=multipart, metadata=metadata)

    events = collapse(collect(envd, tmp_path, overwrite))
    # Metadata that is already there is set again: one more CHMOD, as upstream.
    assert events == expected("f.txt", OVERWRITE, metadata)
    assert Path(target).read_bytes() == b"replaced"


@pytest.mark.parametrize("collector", COLLECTORS)
@pytest.mark.parametrize("multipart", [False, True], ids=["raw", "multipart"])
def test_new_file_in_new_subdirectories(
    envd: Daemon, tmp_path: Path, collector: str, multipart: bool
) -> None:
    def new() -> None:
        upload(envd.url, str(tmp_path / "a/b/f.txt"), b"x", multipart=multipart, metadata=False)

    events = collapse(COLLECTORS[collector](envd, tmp_path, new))
    assert events == dirs_created("a", "a/b") + expected("a/b/f.txt", NEW, False)


def _spin(stop: Any) -> None:
    while not stop.is_set():
        pass


@contextlib.contextmanager
def cpus_saturated() -> Iterator[None]:
    stop = multiprocessing.get_context("fork").Event()
    spinners = [
        multiprocessing.get_context("fork").Process(target=_spin, args=(stop,))
        for _ in range(2 * (os.cpu_count() or 1))
    ]
    for p in spinners:
        p.start()
    try:
        yield
    finally:
        stop.set()
        for p in spinners:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


def test_new_subdirectories_with_the_cpu_saturated(envd: Daemon, tmp_path: Path) -> None:
    # The recursive-watch race: the file written into a directory created a
    # moment before must keep its CREATE and its WRITE, every time.
    def burst() -> None:
        for i in range(20):
            upload(
                envd.url, str(tmp_path / f"d{i}/s/f"), b"x", multipart=i % 2 == 1, metadata=False
            )

    with cpus_saturated():
        events = collapse(stream_events(envd, tmp_path, burst))
    want: Pairs = []
    for i in range(20):
        want += dirs_created(f"d{i}", f"d{i}/s") + expected(f"d{i}/s/f", NEW, False)
    assert events == want


def test_sdk_watch_dir_sees_upstreams_sequence(sandbox: Sandbox, tmp_path: Path) -> None:
    handle = sandbox.files.watch_dir(str(tmp_path), recursive=True)
    try:
        sandbox.files.write(str(tmp_path / "new.txt"), "one")
        sandbox.files.write(str(tmp_path / "new.txt"), "two")
        sandbox.files.write(str(tmp_path / "sub/deep.txt"), "three")
        (tmp_path / MARKER).mkdir()
        pairs: Pairs = []
        deadline = time.monotonic() + 30
        while (("CREATE", MARKER)) not in pairs and time.monotonic() < deadline:
            pairs += [(e.type.name, e.name) for e in handle.get_new_events()]
            time.sleep(0.05)
    finally:
        handle.stop()
    assert pairs[-1] == ("CREATE", MARKER)
    assert collapse(pairs[:-1]) == (
        expected("new.txt", NEW, False)
        + expected("new.txt", OVERWRITE, False)
        + dirs_created("sub")
        + expected("sub/deep.txt", NEW, False)
    )


def test_no_names_but_the_targets(envd: Daemon, tmp_path: Path) -> None:
    # No temporary names (`#<inode>`, `.<hex>.e2b-upload.tmp`) ever show up,
    # not even for many concurrent uploads.
    def many() -> None:
        threads = [
            threading.Thread(
                target=upload,
                args=(envd.url, str(tmp_path / f"c{i}"), os.urandom(3 << 20)),
                kwargs={"multipart": bool(i % 2), "metadata": False},
            )
            for i in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    names = {name for _, name in stream_events(envd, tmp_path, many)}
    assert names == {f"c{i}" for i in range(6)}
