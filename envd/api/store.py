"""The control plane's state: the access token, `/init` bookkeeping and host helpers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from envd.api.handover import HandoverStatus
from envd.api.token import AccessToken
from envd.config import Config
from envd.execcontext import ExecContext
from envd.host import clock
from envd.host.cacerts import CACertInstaller
from envd.host.metrics import CPUSampler
from envd.host.mmds import MMDSClient, MMDSOpts, MMDSPoller, RoutePinner
from envd.host.nfs import NFSMounter
from envd.logs import HTTPExporter

log = logging.getLogger("envd.api")


@dataclass(eq=False)
class ControlPlane:
    config: Config
    exec_ctx: ExecContext
    exporter: HTTPExporter | None = None
    access_token: AccessToken = field(default_factory=AccessToken)
    init_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Newest /init timestamp applied (ns); replays of older ones change nothing.
    last_set_time: int | None = None
    initialized: bool = False
    cpu: CPUSampler = field(default_factory=CPUSampler)
    nfs: NFSMounter = field(default_factory=NFSMounter)
    # Set when this daemon resumed from a live upgrade (X-Envd-Handover, lockdown).
    handover: HandoverStatus = field(default_factory=HandoverStatus)
    set_system_time: Callable[[int], None] = clock.set_system_time
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.mmds = MMDSClient(self.config.mmds_address)
        self.pinner = RoutePinner(self.config.mmds_address)
        self.ca = CACertInstaller(self.config.ca_bundle_path, self.config.ca_extra_path)
        self.poller = MMDSPoller(
            self.mmds, self.exec_ctx.internal_envs, self.config.run_dir, self._on_mmds_opts
        )
        self.hosts_lock = asyncio.Lock()

    def start(self) -> None:
        """Start-up work that needs the running loop."""
        if not self.config.is_not_fc:
            self.poller.start(None)

    def _on_mmds_opts(self, opts: MMDSOpts) -> None:
        if self.exporter is not None:
            self.exporter.configure(opts.sandbox_id, opts.template_id, opts.logs_collector_address)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A background task owned by the daemon, cancelled on shutdown."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.poller.close()
        await self.ca.close()
        if self.exporter is not None:
            await self.exporter.aclose()
