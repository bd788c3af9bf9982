"""`filesystem.Filesystem`: thin Connect handlers over operations.py and watch.py."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from envd.execcontext import ExecContext
from envd.gen.filesystem import filesystem_pb2 as pb
from envd.gen.filesystem.filesystem_connect import Filesystem
from envd.permissions.paths import PathError, expand_and_resolve
from envd.permissions.users import User
from envd.rpc.compression import accepts_gzip
from envd.rpc.context import basic_auth_or_default_user, request_state
from envd.rpc.headers import keepalive_interval
from envd.services.filesystem import operations
from envd.services.filesystem.legacy import is_legacy
from envd.services.filesystem.wire import Listing

if TYPE_CHECKING:
    from envd.services.filesystem.watch import FilesystemEvent, Watcher

# Batches (one per inotify read) waiting for a slow stream client; past this
# the watcher stops reading and the kernel queue takes the rest.
STREAM_QUEUE_BATCHES = 16
# Unfetched events one polling watcher may hold (upstream: unbounded).
POLL_BUFFER_LIMIT = 65_536
# How streams end when the daemon stops (docs/compatibility.md).
SHUTTING_DOWN = "envd is shutting down"
WATCHER_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz1234567890"


# Smaller encoded listings are left to connectrpc's compress step on the loop.
PRECOMPRESS_BYTES = 64 * 1024


def _listing(path: str, depth: int, encoding: str | None, gzipped: bool) -> Listing:
    """List `path` and encode (and compress) the listing as the request will want it."""
    listing = Listing(operations.list_dir(path, depth))
    if encoding is not None:
        listing.prepare(binary=encoding == "proto", gzipped=gzipped, min_gzip=PRECOMPRESS_BYTES)
    return listing


def new_watcher_id() -> str:
    return "w" + "".join(secrets.choice(WATCHER_ID_ALPHABET) for _ in range(20))


async def _open_watcher(
    path: str,
    request: pb.WatchDirRequest | pb.CreateWatcherRequest,
    sink: Callable[[list[FilesystemEvent]], Awaitable[None]],
    on_error: Callable[[str], None],
) -> Watcher:
    # inotify (ctypes, libc) is loaded by the first watch, not at start-up:
    # most sandboxes never watch a directory.
    from envd.services.filesystem.watch import Watcher  # noqa: PLC0415

    return await Watcher.open(
        path,
        recursive=request.recursive,
        include_entry=request.include_entry,
        allow_network_mounts=request.allow_network_mounts,
        sink=sink,
        on_error=on_error,
    )


class PolledWatcher:
    """A CreateWatcher watcher: events buffered until GetWatcherEvents drains them."""

    def __init__(self) -> None:
        self.events: list[FilesystemEvent] = []
        self.error: str | None = None
        self.watcher: Watcher | None = None

    async def add(self, events: list[FilesystemEvent]) -> None:
        if self.error is not None:
            return
        if len(self.events) + len(events) > POLL_BUFFER_LIMIT:
            self.fail(
                f"watcher error: event buffer overflow: more than {POLL_BUFFER_LIMIT} events "
                "were not fetched; remove this watcher and create a new one"
            )
            if self.watcher is not None:
                self.watcher.close()
            return
        self.events.extend(events)

    def fail(self, message: str) -> None:
        # As upstream: once failed, every poll reports the error and events are gone.
        self.error = message
        self.events = []


class FilesystemService(Filesystem):
    def __init__(self, exec_ctx: ExecContext) -> None:
        self.exec_ctx = exec_ctx
        self._polled: dict[str, PolledWatcher] = {}
        self._streams: set[Watcher] = set()
        # Set at shutdown: WatchDir streams end with `unavailable`.
        self._ending = asyncio.Event()

    def end_streams(self) -> None:
        """Shutdown has begun: end WatchDir streams with `unavailable`, refuse new ones."""
        self._ending.set()

    async def close(self) -> None:
        """Stop every watcher and release every inotify instance (daemon shutdown)."""
        for polled in self._polled.values():
            if polled.watcher is not None:
                polled.watcher.close()
        self._polled.clear()
        for watcher in self._streams:
            watcher.close()
        self._streams.clear()

    # -- live upgrade --

    def polled_watchers(self) -> dict[str, PolledWatcher]:
        return self._polled

    async def adopt_watcher(
        self,
        watcher_id: str,
        path: str,
        *,
        recursive: bool,
        include_entry: bool,
        events: list[FilesystemEvent],
    ) -> None:
        """Re-arm a polling watcher handed over by the previous daemon, under its id."""
        from envd.services.filesystem.watch import Watcher  # noqa: PLC0415

        polled = PolledWatcher()
        polled.events = list(events)
        # Network mounts were allowed or refused when the watcher was created.
        polled.watcher = await Watcher.open(
            path,
            recursive=recursive,
            include_entry=include_entry,
            allow_network_mounts=True,
            sink=polled.add,
            on_error=polled.fail,
        )
        self._polled[watcher_id] = polled

    # -- request plumbing --

    def _user(self) -> User:
        return basic_auth_or_default_user(self.exec_ctx.default_user)

    def _resolve(self, path: str, user: User) -> str:
        if "\0" in path:
            # No system call takes it (Go's fail with EINVAL); refuse it up front.
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"invalid path {json.dumps(path)}: contains NUL"
            )
        try:
            return expand_and_resolve(path, user, self.exec_ctx.default_workdir)
        except PathError as e:
            raise ConnectError(Code.INVALID_ARGUMENT, str(e)) from None

    # -- unary --

    async def stat(
        self, request: pb.StatRequest, ctx: RequestContext[pb.StatRequest, pb.StatResponse]
    ) -> pb.StatResponse:
        path = self._resolve(request.path, self._user())
        entry = await asyncio.to_thread(operations.stat_entry, path)
        return pb.StatResponse(entry=entry)

    async def make_dir(
        self, request: pb.MakeDirRequest, ctx: RequestContext[pb.MakeDirRequest, pb.MakeDirResponse]
    ) -> pb.MakeDirResponse:
        user = self._user()
        path = self._resolve(request.path, user)
        entry = await asyncio.to_thread(operations.make_dir, path, user)
        return pb.MakeDirResponse(entry=entry)

    async def move(
        self, request: pb.MoveRequest, ctx: RequestContext[pb.MoveRequest, pb.MoveResponse]
    ) -> pb.MoveResponse:
        user = self._user()
        source = self._resolve(request.source, user)
        destination = self._resolve(request.destination, user)
        entry = await asyncio.to_thread(operations.move, source, destination, user)
        return pb.MoveResponse(entry=entry)

    async def list_dir(
        self, request: pb.ListDirRequest, ctx: RequestContext[pb.ListDirRequest, pb.ListDirResponse]
    ) -> pb.ListDirResponse:
        path = self._resolve(request.path, self._user())
        # Listed and encoded in one worker-thread call: for a big directory
        # the encoding costs as much as the listing and must not hold the loop.
        # A legacy client gets reduced messages instead (legacy.py); a guess
        # that misses (a GET's `encoding`) only moves the encoding to the loop.
        encoding = None
        if not is_legacy(ctx):
            encoding = "proto" if "proto" in ctx.request_headers.get("content-type", "") else "json"
        gzipped = accepts_gzip(ctx.request_headers.get("accept-encoding", ""))
        listing = await asyncio.to_thread(_listing, path, request.depth, encoding, gzipped)
        # Wire-ready stand-in for the message (see wire.py); both codecs take it.
        return cast(pb.ListDirResponse, listing)

    async def remove(
        self, request: pb.RemoveRequest, ctx: RequestContext[pb.RemoveRequest, pb.RemoveResponse]
    ) -> pb.RemoveResponse:
        path = self._resolve(request.path, self._user())
        await asyncio.to_thread(operations.remove, path)
        return pb.RemoveResponse()

    # -- watching --

    async def watch_dir(
        self,
        request: pb.WatchDirRequest,
        ctx: RequestContext[pb.WatchDirRequest, pb.WatchDirResponse],
    ) -> AsyncIterator[pb.WatchDirResponse]:
        if self._ending.is_set():
            raise ConnectError(Code.UNAVAILABLE, SHUTTING_DOWN)
        path = self._resolve(request.path, self._user())
        interval = keepalive_interval(ctx.request_headers)
        remaining_ms = ctx.timeout_ms
        deadline = None if remaining_ms is None else time.monotonic() + remaining_ms / 1000
        queue: asyncio.Queue[list[FilesystemEvent]] = asyncio.Queue(STREAM_QUEUE_BATCHES)
        loop = asyncio.get_running_loop()
        failure: asyncio.Future[str] = loop.create_future()

        def on_error(message: str) -> None:
            if not failure.done():
                failure.set_result(message)

        watcher = await _open_watcher(path, request, queue.put, on_error)
        self._streams.add(watcher)
        disconnected = asyncio.ensure_future(request_state().disconnected.wait())
        ending = asyncio.ensure_future(self._ending.wait())
        getter: asyncio.Future[list[FilesystemEvent]] | None = None
        try:
            yield pb.WatchDirResponse(start=pb.WatchDirResponse.StartEvent())
            while True:
                timeout: float = interval
                if deadline is not None:
                    timeout = min(timeout, deadline - time.monotonic())
                    if timeout <= 0:
                        raise ConnectError(Code.DEADLINE_EXCEEDED, "context deadline exceeded")
                if getter is None:
                    getter = asyncio.ensure_future(queue.get())
                waited: set[asyncio.Future[Any]] = {getter, failure, disconnected, ending}
                done, _ = await asyncio.wait(
                    waited,
                    timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter in done:
                    batch, getter = getter.result(), None
                    for event in batch:
                        yield pb.WatchDirResponse(filesystem=event)
                    continue
                if failure in done:
                    # Deliver what was derived before the failure, then end.
                    while not queue.empty():
                        for event in queue.get_nowait():
                            yield pb.WatchDirResponse(filesystem=event)
                    raise ConnectError(Code.INTERNAL, failure.result())
                if disconnected in done:
                    return
                if ending in done:
                    raise ConnectError(Code.UNAVAILABLE, SHUTTING_DOWN)
                if deadline is None or time.monotonic() < deadline:
                    yield pb.WatchDirResponse(keepalive=pb.WatchDirResponse.KeepAlive())
        finally:
            watcher.close()
            self._streams.discard(watcher)
            disconnected.cancel()
            ending.cancel()
            if getter is not None:
                getter.cancel()

    async def create_watcher(
        self,
        request: pb.CreateWatcherRequest,
        ctx: RequestContext[pb.CreateWatcherRequest, pb.CreateWatcherResponse],
    ) -> pb.CreateWatcherResponse:
        path = self._resolve(request.path, self._user())
        polled = PolledWatcher()
        polled.watcher = await _open_watcher(path, request, polled.add, polled.fail)
        watcher_id = new_watcher_id()
        self._polled[watcher_id] = polled
        return pb.CreateWatcherResponse(watcher_id=watcher_id)

    def _polled_watcher(self, watcher_id: str) -> PolledWatcher:
        polled = self._polled.get(watcher_id)
        if polled is None:
            raise ConnectError(Code.NOT_FOUND, f"watcher with id {watcher_id} not found")
        return polled

    async def get_watcher_events(
        self,
        request: pb.GetWatcherEventsRequest,
        ctx: RequestContext[pb.GetWatcherEventsRequest, pb.GetWatcherEventsResponse],
    ) -> pb.GetWatcherEventsResponse:
        polled = self._polled_watcher(request.watcher_id)
        if polled.error is not None:
            raise ConnectError(Code.INTERNAL, polled.error)
        events, polled.events = polled.events, []
        return pb.GetWatcherEventsResponse(events=events)

    async def remove_watcher(
        self,
        request: pb.RemoveWatcherRequest,
        ctx: RequestContext[pb.RemoveWatcherRequest, pb.RemoveWatcherResponse],
    ) -> pb.RemoveWatcherResponse:
        polled = self._polled_watcher(request.watcher_id)
        del self._polled[request.watcher_id]
        if polled.watcher is not None:
            polled.watcher.close()
        return pb.RemoveWatcherResponse()
