"""Old response shapes for the old Python SDK (user agent exactly `connect-python`).

That SDK raised on any field it did not know, so, as upstream, its filesystem
responses are rebuilt as the messages of proto/legacy/filesystem.proto and
marked with `X-E2B-Legacy-SDK: true`. Both codecs then encode the reduced
messages as usual; errors pass through untouched. Installed on the filesystem
service only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from connectrpc.request import RequestContext
from google.protobuf.message import Message

from envd.gen.filesystem import filesystem_pb2 as pb
from envd.gen.legacy import filesystem_pb2 as old
from envd.services.filesystem.wire import Listing

LEGACY_USER_AGENT = "connect-python"
NOTIFY_HEADER = "x-e2b-legacy-sdk"


def is_legacy(ctx: RequestContext[Any, Any]) -> bool:
    # The first value, compared whole and case-sensitively, as Go's Header.Get.
    return ctx.request_headers.get("user-agent") == LEGACY_USER_AGENT


# The enums are converted by number, as upstream's Go conversion: the old
# FileType has no symlink, whose 3 passes through as an unknown value.
def _file_type(value: pb.FileType) -> old.FileType:
    return cast(old.FileType, int(value))


def _event_type(value: pb.EventType) -> old.EventType:
    return cast(old.EventType, int(value))


def _entry(entry: pb.EntryInfo) -> old.EntryInfo:
    return old.EntryInfo(name=entry.name, type=_file_type(entry.type), path=entry.path)


def _event(event: pb.FilesystemEvent) -> old.FilesystemEvent:
    return old.FilesystemEvent(name=event.name, type=_event_type(event.type))


def _watch(message: pb.WatchDirResponse) -> old.WatchDirResponse:
    match message.WhichOneof("event"):
        case "start":
            return old.WatchDirResponse(start=old.WatchDirResponse.StartEvent())
        case "filesystem":
            return old.WatchDirResponse(filesystem=_event(message.filesystem))
        case "keepalive":
            return old.WatchDirResponse(keepalive=old.WatchDirResponse.KeepAlive())
    return old.WatchDirResponse()


def _with_entry(factory: Callable[..., Message]) -> Callable[[Any], Message]:
    # A missing entry stays missing rather than becoming an empty one.
    def convert(message: Any) -> Message:
        if message.HasField("entry"):
            return factory(entry=_entry(message.entry))
        return factory()

    return convert


_CONVERTERS: dict[type, Callable[[Any], Message]] = {
    pb.StatResponse: _with_entry(old.StatResponse),
    pb.MakeDirResponse: _with_entry(old.MakeDirResponse),
    pb.MoveResponse: _with_entry(old.MoveResponse),
    pb.ListDirResponse: lambda m: old.ListDirResponse(entries=[_entry(e) for e in m.entries]),
    # What the service returns for ListDir in place of the message.
    Listing: lambda m: to_legacy(m.to_message()),
    pb.RemoveResponse: lambda _m: old.RemoveResponse(),
    pb.WatchDirResponse: _watch,
    pb.CreateWatcherResponse: lambda m: old.CreateWatcherResponse(watcher_id=m.watcher_id),
    pb.GetWatcherEventsResponse: lambda m: old.GetWatcherEventsResponse(
        events=[_event(e) for e in m.events]
    ),
    pb.RemoveWatcherResponse: lambda _m: old.RemoveWatcherResponse(),
}


def to_legacy(message: Any) -> Any:
    """The old shape of a filesystem response; anything else is returned as is."""
    convert = _CONVERTERS.get(type(message))
    return message if convert is None else convert(message)


class LegacyInterceptor:
    """connectrpc interceptor: unary and server-stream filesystem responses."""

    async def intercept_unary(
        self,
        call_next: Callable[[Any, RequestContext[Any, Any]], Awaitable[Any]],
        request: Any,
        ctx: RequestContext[Any, Any],
    ) -> Any:
        response = await call_next(request, ctx)
        # Only successful unary responses are marked (an error never gets here).
        if not is_legacy(ctx):
            return response
        ctx.response_headers[NOTIFY_HEADER] = "true"
        return to_legacy(response)

    def intercept_server_stream(
        self,
        call_next: Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Any]],
        request: Any,
        ctx: RequestContext[Any, Any],
    ) -> AsyncIterator[Any]:
        stream = call_next(request, ctx)
        if not is_legacy(ctx):
            return stream
        # Marked before the handler runs, so a stream that fails at once is marked too.
        ctx.response_headers[NOTIFY_HEADER] = "true"
        return _reduced(stream)


async def _reduced(stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for message in stream:
            yield to_legacy(message)
    finally:
        # The server closes this generator; the handler's clean-up must run now too.
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
