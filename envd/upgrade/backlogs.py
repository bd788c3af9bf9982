"""Output backlogs carried beside the handover blob (an envd-py extension).

Upstream's schema has no place for output read but not yet delivered (it
discards such output), so envd-py writes it to a second file next to the
blob. An upstream envd on the incoming side never reads that file (it stays
on the tmpfs until the next envd-py start removes it); an upstream envd on the
outgoing side writes none, and nothing is carried.

Layout: JSON `{"version": 1, "live": {pid: pieces}, "retained": {pid: pieces}}`
where pieces are `[member, base64 bytes]` in the order they were written.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os

from envd.services.process.backlog import Backlog
from envd.services.process.table import ProcessTable

FILE_NAME = "envd-handover.backlog.json"
VERSION = 1

Pieces = list[tuple[str, bytes]]


def _encode(pieces: Pieces) -> list[list[str]]:
    return [[member, base64.b64encode(data).decode()] for member, data in pieces]


def _decode(raw: object) -> Pieces:
    out: Pieces = []
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
                with contextlib.suppress(ValueError):
                    out.append((item[0], base64.b64decode(item[1], validate=True)))
    return out


def export(table: ProcessTable) -> bytes:
    live = {
        str(pid): _encode(h.fanout.backlog.peek())
        for pid, h in table.live.items()
        if h.fanout.backlog
    }
    retained = {
        str(pid): _encode(r.backlog.peek()) for pid, r in table.retained.items() if r.backlog
    }
    return json.dumps({"version": VERSION, "live": live, "retained": retained}).encode()


def write(run_dir: str, blob: bytes) -> None:
    path = os.path.join(run_dir, FILE_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, blob)
    finally:
        os.close(fd)


def remove(run_dir: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(run_dir, FILE_NAME))


class Carried:
    """What the previous daemon had kept, by pid; read once, then the file is gone."""

    def __init__(self, live: dict[int, Pieces], retained: dict[int, Pieces]) -> None:
        self.live = live
        self.retained = retained

    @classmethod
    def read(cls, run_dir: str) -> Carried:
        path = os.path.join(run_dir, FILE_NAME)
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read())
        except (OSError, ValueError):
            return cls({}, {})
        finally:
            remove(run_dir)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            return cls({}, {})

        def section(name: str) -> dict[int, Pieces]:
            raw = data.get(name)
            if not isinstance(raw, dict):
                return {}
            return {int(k): _decode(v) for k, v in raw.items() if k.isdigit()}

        return cls(section("live"), section("retained"))


def fill(backlog: Backlog | None, pieces: Pieces) -> None:
    if backlog is not None:
        for member, data in pieces:
            backlog.add(member, data)
