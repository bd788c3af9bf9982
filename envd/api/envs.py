"""`GET /envs` and `GET /metrics`: read-only views for the platform."""

from __future__ import annotations

import asyncio
import json
import logging
import os

from starlette.requests import Request
from starlette.responses import Response

from envd.api.store import ControlPlane
from envd.host.metrics import collect
from envd.logs import operation_id

log = logging.getLogger("envd.api")


_HEADERS = {"Cache-Control": "no-store", "Content-Type": "application/json"}


def _json(value: object, **dumps: object) -> Response:
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False, **dumps) + "\n"  # type: ignore[arg-type]
    return Response(body, headers=_HEADERS)


async def get_envs(request: Request) -> Response:
    cp: ControlPlane = request.app.state.control
    log.debug("getting env vars", extra={"operation_id": operation_id()})
    # Go encodes a map with its keys sorted.
    return _json(cp.exec_ctx.envs(), sort_keys=True)


async def get_metrics(request: Request) -> Response:
    cp: ControlPlane = request.app.state.control
    try:
        # statvfs("/") can wait on a sick (network) block device; keep it off the loop.
        disk = await asyncio.to_thread(os.statvfs, "/")
        metrics = collect(cp.cpu, disk)
    except (OSError, RuntimeError) as e:
        log.error("failed to get metrics: %s", e)
        return Response(status_code=500, headers=_HEADERS)
    return _json(metrics)
