"""`process.Process` (placeholder until the process service lands)."""

from __future__ import annotations

from envd.execcontext import ExecContext
from envd.gen.process.process_connect import Process


class ProcessService(Process):
    def __init__(self, exec_ctx: ExecContext) -> None:
        self.exec_ctx = exec_ctx

    async def close(self) -> None:
        pass
