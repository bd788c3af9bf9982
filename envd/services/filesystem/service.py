"""`filesystem.Filesystem`: every RPC answers `unimplemented` until the filesystem issue lands."""

from __future__ import annotations

from envd.execcontext import ExecContext
from envd.gen.filesystem.filesystem_connect import Filesystem


class FilesystemService(Filesystem):
    def __init__(self, exec_ctx: ExecContext) -> None:
        self.exec_ctx = exec_ctx

    async def close(self) -> None:
        pass
