"""What the incoming daemon knows about the handover it resumed from.

Read by `/init` (the `X-Envd-Handover` header, the thaw) and by the access
token middleware (the post-upgrade lockdown, auth.md §2.3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from envd.api.responses import go_json

log = logging.getLogger("envd.upgrade")

# How long a resumed daemon keeps the workload frozen without an /init.
FALLBACK_THAW_S = 60.0


@dataclass(slots=True)
class HandoverResult:
    """Totals carried and the failed part of each (ok = total - failed)."""

    failed: bool = False
    procs: int = 0
    procs_failed: int = 0
    retained: int = 0
    retained_failed: int = 0
    watchers: int = 0
    watchers_failed: int = 0

    def header(self) -> str:
        # Go's encoding/json, fields in declaration order.
        return go_json(
            {
                "failed": self.failed,
                "procs": self.procs,
                "procs_failed": self.procs_failed,
                "retained": self.retained,
                "retained_failed": self.retained_failed,
                "watchers": self.watchers,
                "watchers_failed": self.watchers_failed,
            }
        ).decode()


@dataclass(eq=False)
class HandoverStatus:
    """None of this is set unless the daemon started with `--resume-handover`."""

    result: HandoverResult | None = None
    # Runs once, at the first thaw after the resume (/init or the fallback):
    # the freezer's thaw, then the carried process timeouts are armed.
    _on_thaw: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)
    _thawed: bool = True
    _fallback: asyncio.TimerHandle | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def resumed(self) -> bool:
        return self.result is not None

    def keep_frozen(
        self,
        thaw: Callable[[], Awaitable[None] | None],
        initialized: Callable[[], bool],
        fallback_s: float = FALLBACK_THAW_S,
    ) -> None:
        """The workload stays frozen until `thaw_now`, or the fallback if no /init comes."""
        self._thawed = False
        self._on_thaw.insert(0, thaw)
        loop = asyncio.get_running_loop()

        def fallback() -> None:
            self._fallback = None
            if not initialized():
                log.warning("post-upgrade /init did not arrive within %gs; thawing", fallback_s)
                self._spawn(self.thaw_now())

        self._fallback = loop.call_later(fallback_s, fallback)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def after_thaw(self, callback: Callable[[], None]) -> None:
        if self._thawed:
            callback()
        else:
            self._on_thaw.append(callback)

    async def thaw_now(self) -> None:
        if self._thawed:
            return
        self._thawed = True
        if self._fallback is not None:
            self._fallback.cancel()
            self._fallback = None
        callbacks, self._on_thaw = self._on_thaw, []
        for callback in callbacks:
            try:
                result = callback()
                if result is not None:
                    await result
            except Exception:
                log.exception("post-upgrade thaw step failed")

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.cancel()
            self._fallback = None
        for task in self._tasks:
            task.cancel()
