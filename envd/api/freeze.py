"""The orchestrator's pause routes: `/freeze`, `/unfreeze`, `/fsfreeze`, `/fsthaw`, `/collapse`.

http-api.md §6–9. The freezes have two locks: the workload freezer's (shared
with `/init`'s thaw and the live upgrade) and the file system's. A client that
leaves while `/freeze` waits for its lock, or while it waits for the cgroups
to settle in report mode, gets 503; thaws always run to the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from starlette.requests import Request
from starlette.responses import Response

from envd.api.files.query import QueryBindError, _parse_int64, _single, parse_query
from envd.api.responses import go_json, json_error, text_error
from envd.host import collapse, fsfreeze
from envd.host.freezer import (
    HIERARCHY,
    LEGACY,
    FreezeCancelled,
    FreezeOptions,
    WorkloadFreezer,
    acquire_unless,
)

log = logging.getLogger("envd.api.freeze")

NO_STORE = {"Cache-Control": "no-store"}


@contextlib.asynccontextmanager
async def disconnect_event(request: Request) -> AsyncIterator[asyncio.Event]:
    """An event set when the client goes away (the body must have been read)."""
    gone = asyncio.Event()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()

    task = asyncio.create_task(watch())
    try:
        yield gone
    finally:
        task.cancel()


def _freeze_options(raw_query: bytes) -> tuple[FreezeOptions, bool]:
    values = parse_query(raw_query)
    mode = _single(values, "mode")
    max_cgroups = _single(values, "maxCgroups")
    max_wait = _single(values, "maxWaitMs")
    cgroups = 0 if max_cgroups is None else _parse_int64("maxCgroups", max_cgroups)
    wait_ms = 0 if max_wait is None else _parse_int64("maxWaitMs", max_wait)
    opts = FreezeOptions(
        max_wait_s=max(wait_ms, 0) / 1000,
        mode=HIERARCHY if mode == HIERARCHY else LEGACY,
        max_cgroups=cgroups,
    )
    return opts, wait_ms > 0


async def post_freeze(request: Request) -> Response:
    freezer: WorkloadFreezer = request.app.state.freezer
    try:
        opts, report = _freeze_options(request.scope.get("query_string", b""))
    except QueryBindError as e:
        return text_error(400, str(e))
    await request.body()
    async with disconnect_event(request) as gone:
        try:
            res = await freezer.freeze(opts, gone)
        except FreezeCancelled:
            return Response(status_code=503)
        if not report:
            return Response(status_code=204)
        if gone.is_set():
            return Response(status_code=503)
    if not res.all_frozen:
        log.warning(
            "pre-pause freeze did not stop the whole workload; snapshot may capture it running"
            " (requested=%d frozen=%d not_frozen=%d failed=%d)",
            res.requested,
            res.frozen,
            res.not_frozen,
            res.failed,
        )
    if res.truncated:
        log.warning("freeze walk hit its bound; some cgroups were never examined")
    if res.unobservable:
        log.warning("cgroup freeze state is unobservable here; freeze issued but unverifiable")
    body = go_json(res.body()) + b"\n"
    return Response(body, 200, headers=NO_STORE, media_type="application/json")


async def post_unfreeze(request: Request) -> Response:
    freezer: WorkloadFreezer = request.app.state.freezer
    await request.body()
    # Shielded: a rollback thaw must complete even when its caller gives up.
    res = await asyncio.shield(freezer.thaw())
    if res.errors:
        message = "\n".join(res.errors)
        log.error("unfreeze workload cgroups: %s", message)
        return json_error(500, message)
    return Response(status_code=204, headers=NO_STORE)


async def post_fsfreeze(request: Request) -> Response:
    state = request.app.state
    lock: asyncio.Lock = state.fs_lock
    await request.body()
    async with disconnect_event(request) as gone:
        if not await acquire_unless(lock, gone):
            return Response(status_code=503)
    try:
        await _fs_call(fsfreeze.freeze, state.config.fsfreeze_mount)
    except fsfreeze.FsFreezeError as e:
        log.error("freeze rootfs: %s", e)
        return json_error(500, str(e))
    finally:
        lock.release()
    return Response(status_code=204, headers=NO_STORE)


# Its own thread: while the file system is frozen, workers of the shared
# executor may all be stuck in writes to it, and the thaw must still run.
_FS_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="envd-fsfreeze")


async def _fs_call(fn: Callable[[str], None], mountpoint: str) -> None:
    await asyncio.get_running_loop().run_in_executor(_FS_EXECUTOR, fn, mountpoint)


async def post_fsthaw(request: Request) -> Response:
    state = request.app.state
    await request.body()
    return await asyncio.shield(_fsthaw(state.fs_lock, state.config.fsfreeze_mount))


async def _fsthaw(lock: asyncio.Lock, mountpoint: str) -> Response:
    async with lock:
        try:
            await _fs_call(fsfreeze.thaw, mountpoint)
        except fsfreeze.FsFreezeError as e:
            log.error("thaw rootfs: %s", e)
            return json_error(500, str(e))
    return Response(status_code=204, headers=NO_STORE)


async def post_collapse(request: Request) -> Response:
    await request.body()
    start = time.monotonic()
    cancel = threading.Event()
    async with disconnect_event(request) as gone:
        work = asyncio.ensure_future(asyncio.to_thread(collapse.collapse_self, cancel))
        left = asyncio.ensure_future(gone.wait())
        await asyncio.wait({work, left}, return_when=asyncio.FIRST_COMPLETED)
        left.cancel()
        cancel.set()  # stops the walk if the client left; harmless once it is done
        try:
            stats = await work
        except (collapse.CollapseCancelled, OSError) as e:
            log.error("collapse envd heap: %s", e)
            return json_error(500, str(e))
    elapsed_ms = int((time.monotonic() - start) * 1000)
    log.info(
        "collapsed envd heap: regions=%d chunks=%d collapsed=%d already_huge=%d skipped=%d",
        stats.regions,
        stats.chunks,
        stats.collapsed,
        stats.already_huge,
        stats.skipped,
    )
    body = {
        "alreadyHuge": stats.already_huge,
        "chunks": stats.chunks,
        "collapsed": stats.collapsed,
        "elapsedMs": elapsed_ms,
        "regions": stats.regions,
        "skipped": stats.skipped,
    }
    return Response(go_json(body) + b"\n", 200, headers=NO_STORE, media_type="application/json")
