"""A rename whose MOVED_FROM and MOVED_TO land in two reads of the inotify fd.

The kernel queues the pair back to back, but the reader can wake between them.
The watcher must still see a rename within the tree (watches relabelled, no
synthetic CREATEs for what the directory already held), not a directory moved
out and another moved in.
"""

from __future__ import annotations

import os
import select
import struct
from pathlib import Path

from envd.gen.filesystem import filesystem_pb2 as pb
from envd.services.filesystem import inotify
from envd.services.filesystem.watch import Watcher, open_watch

_HEADER = struct.Struct("iIII")


def records(fd: int) -> list[bytes]:
    """Every queued inotify record, one bytes object each."""
    assert select.select([fd], [], [], 5)[0]
    data = os.read(fd, 1 << 16)
    out = []
    while data:
        length = _HEADER.unpack_from(data)[3]
        out.append(data[: _HEADER.size + length])
        data = data[_HEADER.size + length :]
    return out


def names(events: list[pb.FilesystemEvent]) -> list[tuple[str, str]]:
    return [(pb.EventType.Name(e.type)[11:], e.name) for e in events]


async def noop_sink(_events: list[pb.FilesystemEvent]) -> None:
    return None


async def test_rename_split_across_two_reads_is_still_a_rename(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d" / "inner").mkdir(parents=True)
    fd, wds = open_watch(str(root), True, False)
    watcher = Watcher(
        fd,
        wds,
        str(root),
        recursive=True,
        include_entry=False,
        sink=noop_sink,
        on_error=lambda _message: None,
    )
    try:
        os.rename(root / "d", root / "e")
        queued = records(fd)
        split = next(
            i + 1
            for i, r in enumerate(queued)
            if inotify.parse_events(r)[0].mask & inotify.IN_MOVED_FROM
        )
        # The read ends right after the MOVED_FROM; the MOVED_TO opens the next one.
        assert inotify.parse_events(queued[split])[0].mask & inotify.IN_MOVED_TO
        first, second = b"".join(queued[:split]), b"".join(queued[split:])
        assert names(watcher._process(first)) == [("RENAME", "d")]
        assert names(watcher._process(second)) == [("CREATE", "e")]
        (root / "e" / "inner" / "f").write_text("")
        batch = b"".join(records(fd))
        assert names(watcher._process(batch)) == [("CREATE", "e/inner/f")]
    finally:
        os.close(fd)
