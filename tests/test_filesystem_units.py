"""In-process checks of pieces a real daemon cannot be pushed into from outside:
a network filesystem, the polling buffer cap, the kernel queue overflowing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.fs.entry import go_mode_string
from envd.fs.errors import go_quote
from envd.gen.filesystem import filesystem_pb2
from envd.permissions.paths import go_clean, go_dir
from envd.services.filesystem import inotify, service, watch


def test_go_helpers() -> None:
    assert go_clean("//a/./b/../c/") == "/a/c"
    assert go_clean("") == "."
    assert go_dir("/home/user/./a/") == "/home/user/a"
    assert go_dir("/a") == "/"
    assert go_quote('a"b\\c\x01é') == '"a\\"b\\\\c\\x01é"'
    assert go_mode_string(0o100644) == "-rw-r--r--"


@pytest.mark.parametrize("magic", sorted(inotify.NETWORK_FS_MAGIC))
def test_network_filesystems_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, magic: int
) -> None:
    monkeypatch.setattr(inotify, "statfs_type", lambda _path: magic)
    with pytest.raises(ConnectError) as caught:
        watch.open_watch(str(tmp_path), recursive=False, allow_network_mounts=False)
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.message == f"cannot watch path on network filesystem: {tmp_path}"
    fd, _ = watch.open_watch(str(tmp_path), recursive=False, allow_network_mounts=True)
    os.close(fd)


def test_statfs_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fail(path: str) -> int:
        raise OSError(13, "Permission denied", path)

    monkeypatch.setattr(inotify, "statfs_type", fail)
    with pytest.raises(ConnectError) as caught:
        watch.open_watch(str(tmp_path), recursive=True, allow_network_mounts=False)
    assert caught.value.message == (
        f"error checking mount status: failed to statfs {tmp_path}: permission denied"
    )


async def test_poll_buffer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "POLL_BUFFER_LIMIT", 3)
    polled = service.PolledWatcher()
    event = filesystem_pb2.FilesystemEvent(name="x", type=filesystem_pb2.EVENT_TYPE_CREATE)
    await polled.add([event, event])
    assert polled.error is None
    await polled.add([event, event])
    assert polled.events == []
    assert polled.error is not None
    assert "event buffer overflow" in polled.error
    await polled.add([event])  # nothing more is collected once failed
    assert polled.events == []


def max_queued_events() -> int:
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


def create_files(directory: Path, count: int) -> None:
    for i in range(count):
        os.close(os.open(directory / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))


async def test_stalled_consumer_ends_in_overflow_not_memory(tmp_path: Path) -> None:
    """A consumer that stops reading: we stop reading too, the kernel queue overflows,
    and the error is reported once the consumer resumes (memory stays bounded)."""
    release = asyncio.Event()
    batches: list[int] = []
    errors: list[str] = []

    async def sink(events: list[filesystem_pb2.FilesystemEvent]) -> None:
        batches.append(len(events))
        await release.wait()

    watcher = await watch.Watcher.open(
        str(tmp_path),
        recursive=False,
        include_entry=False,
        allow_network_mounts=False,
        sink=sink,
        on_error=errors.append,
    )
    try:
        limit = max_queued_events()
        # Enough records to fill our pending buffer and then the kernel queue.
        await asyncio.to_thread(create_files, tmp_path, limit + 40_000)
        await asyncio.sleep(0.2)
        assert watcher._pending_bytes <= watch.PENDING_LIMIT + watch.READ_SIZE
        release.set()
        for _ in range(500):
            if errors:
                break
            await asyncio.sleep(0.02)
        assert errors == [watch.OVERFLOW_MESSAGE]
        assert watcher.closed
    finally:
        watcher.close()
