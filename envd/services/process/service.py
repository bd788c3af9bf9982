"""`process.Process`: the eight RPC handlers.

The work is elsewhere: `handler` (one running process), `launch` (spawn),
`fanout` (subscribers), `table` (live and retained processes). Handlers here
only translate between messages and those.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any, TypeVar, cast

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from envd.execcontext import ExecContext
from envd.gen.process import process_pb2 as pb
from envd.gen.process.process_connect import Process
from envd.host.cgroups import Manager, NoopManager, cgroup_kind
from envd.permissions.users import User
from envd.rpc.context import basic_auth_or_default_user, request_state
from envd.rpc.headers import keepalive_interval
from envd.services.process import launch
from envd.services.process.backlog import Retention
from envd.services.process.fanout import KEEPALIVE, Subscriber
from envd.services.process.handler import SHUTTING_DOWN, ProcessHandle
from envd.services.process.status import ExitStatus
from envd.services.process.table import ProcessTable, check_selector
from envd.services.process.wire import DataChunk

log = logging.getLogger(__name__)


Response = TypeVar("Response", pb.StartResponse, pb.ConnectResponse)

_SIGNALS = {pb.SIGNAL_SIGKILL: signal.SIGKILL, pb.SIGNAL_SIGTERM: signal.SIGTERM}


def process_lifetime(ctx: RequestContext[Any, Any]) -> float | None:
    """`Connect-Timeout-Ms` as the process's lifetime; absent or ≤ 0 → unlimited.

    connectrpc has already rejected values that are not integers.
    """
    raw = ctx.request_headers.get("connect-timeout-ms")
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return value / 1000 if value > 0 else None


def request_deadline(
    ctx: RequestContext[Any, Any], loop: asyncio.AbstractEventLoop
) -> float | None:
    """connectrpc computes the deadline but does not enforce it: streams do."""
    remaining = ctx.timeout_ms
    return None if remaining is None else loop.time() + remaining / 1000


def end_event(status: ExitStatus) -> pb.ProcessEvent:
    end = pb.ProcessEvent.EndEvent(
        exit_code=status.exit_code, exited=status.exited, status=status.status
    )
    if status.error is not None:
        end.error = status.error
    return pb.ProcessEvent(end=end)


class ProcessService(Process):
    def __init__(
        self,
        exec_ctx: ExecContext,
        cgroups: Manager | None = None,
        retention: Retention | None = None,
    ) -> None:
        self.exec_ctx = exec_ctx
        self.cgroups = cgroups or NoopManager()
        self.retention = Retention() if retention is None else retention
        self._table: ProcessTable | None = None
        self._closing = False
        # Set with _closing: wakes StreamInput calls waiting for their client.
        self._closed = asyncio.Event()

    @property
    def table(self) -> ProcessTable:
        # Created on first use: it needs the server's running loop.
        if self._table is None:
            self._table = ProcessTable(asyncio.get_running_loop())
        return self._table

    async def close(self) -> None:
        """Shutdown: drop our fds, timers and streams; children keep running (as upstream).

        Open streams end with `unavailable`; streams asked for afterwards
        (while uvicorn drains) get it at once.
        """
        self._closing = True
        self._closed.set()
        if self._table is not None:
            self._table.close()

    def _check_open(self) -> None:
        if self._closing:
            raise ConnectError(Code.UNAVAILABLE, SHUTTING_DOWN)

    def _user(self) -> User:
        return basic_auth_or_default_user(self.exec_ctx.default_user)

    def register(self, handle: ProcessHandle, kill_at: float | None) -> None:
        """A child becomes visible to List/Connect and is watched until it ends.

        New children (Start) and children taken over in a live upgrade both come here.
        """
        if self.retention.enabled and handle.fanout.backlog is None:
            handle.fanout.backlog = self.retention.backlog()
        self.table.add(handle)
        handle.start(kill_at)

    # --- streams ---------------------------------------------------------

    async def start(
        self, request: pb.StartRequest, ctx: RequestContext[pb.StartRequest, pb.StartResponse]
    ) -> AsyncIterator[pb.StartResponse]:
        self._check_open()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = request_deadline(ctx, loop)
        lifetime = process_lifetime(ctx)
        user = self._user()
        keepalive = keepalive_interval(ctx.request_headers)
        # Spawning and registering run to the end even if the client leaves
        # meanwhile (as upstream: the process is started and kept); only then
        # does a cancelled request drop its subscription.
        # The lifetime counts from the start of the request, as the deadline does.
        kill_at = None if lifetime is None else started + lifetime
        launched = asyncio.ensure_future(
            self._launch(request, user, keepalive=keepalive, kill_at=kill_at)
        )
        try:
            handle, subscriber = await asyncio.shield(launched)
        except asyncio.CancelledError:
            launched.add_done_callback(_drop_subscription)
            raise
        async for response in _events(pb.StartResponse, subscriber, handle.pid, deadline):
            yield response

    async def _launch(
        self, request: pb.StartRequest, user: User, *, keepalive: float, kill_at: float | None
    ) -> tuple[ProcessHandle, Subscriber]:
        loop = asyncio.get_running_loop()
        tag = request.tag if request.HasField("tag") else None
        # Its own cgroup below user/ptys (tag _system: none), joined before exec.
        cgroup = self.cgroups.command_cgroup(cgroup_kind(request.HasField("pty"), tag))
        try:
            child = await launch.start(
                loop, request, user, self.exec_ctx, cgroup=None if cgroup is None else cgroup.path
            )
        except BaseException:
            if cgroup is not None:
                self.cgroups.release(cgroup)
            raise
        handle = ProcessHandle(
            loop, child, config=request.process, tag=tag, cgroup=cgroup, cgroups=self.cgroups
        )
        subscriber = handle.fanout.subscribe(keepalive)
        self.register(handle, kill_at)
        log.info(
            "process_start pid=%d cmd=%r timeout=%s",
            handle.pid,
            " ".join([request.process.cmd, *request.process.args]),
            None if kill_at is None else round(kill_at - loop.time(), 3),
        )
        return handle, subscriber

    async def connect(
        self,
        request: pb.ConnectRequest,
        ctx: RequestContext[pb.ConnectRequest, pb.ConnectResponse],
    ) -> AsyncIterator[pb.ConnectResponse]:
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = request_deadline(ctx, loop)
        selector = check_selector(request)
        try:
            handle = self.table.get(request)
        except ConnectError as e:
            if e.code != Code.NOT_FOUND:
                raise
            retained = self.table.get_retained(selector)
            start = pb.ProcessEvent.StartEvent(pid=retained.pid)
            yield pb.ConnectResponse(event=pb.ProcessEvent(start=start))
            if retained.backlog:
                for member, data in retained.backlog.take():
                    yield DataChunk(member, data)  # type: ignore[misc]  # see wire.py
            yield pb.ConnectResponse(event=end_event(retained.status))
            return
        subscriber = handle.fanout.subscribe(keepalive_interval(ctx.request_headers))
        async for response in _events(pb.ConnectResponse, subscriber, handle.pid, deadline):
            yield response

    # --- unary -----------------------------------------------------------

    async def list(
        self, request: pb.ListRequest, ctx: RequestContext[pb.ListRequest, pb.ListResponse]
    ) -> pb.ListResponse:
        return pb.ListResponse(
            processes=[
                pb.ProcessInfo(config=h.config, pid=h.pid, tag=h.tag)
                for h in self.table.live.values()
            ]
        )

    async def update(
        self, request: pb.UpdateRequest, ctx: RequestContext[pb.UpdateRequest, pb.UpdateResponse]
    ) -> pb.UpdateResponse:
        handle = self.table.get(request)
        if request.HasField("pty"):
            handle.resize(request.pty.size.rows, request.pty.size.cols)
        return pb.UpdateResponse()

    async def send_input(
        self,
        request: pb.SendInputRequest,
        ctx: RequestContext[pb.SendInputRequest, pb.SendInputResponse],
    ) -> pb.SendInputResponse:
        await _write_input(self.table.get(request), request.input)
        return pb.SendInputResponse()

    async def stream_input(
        self,
        request: AsyncIterator[pb.StreamInputRequest],
        ctx: RequestContext[pb.StreamInputRequest, pb.StreamInputResponse],
    ) -> pb.StreamInputResponse:
        target: ProcessHandle | None = None
        messages = aiter(request)
        while True:
            try:
                message = await self._next_input(messages)
            except StopAsyncIteration:
                return pb.StreamInputResponse()
            except ConnectError as e:
                raise ConnectError(
                    Code.UNKNOWN, f"error streaming input: {e.code.value}: {e.message}"
                ) from None
            except Exception as e:
                raise ConnectError(Code.UNKNOWN, f"error streaming input: {e}") from None
            if message is None:
                raise ConnectError(Code.UNAVAILABLE, SHUTTING_DOWN)
            match message.WhichOneof("event"):
                case "start":
                    target = self.table.get(message.start)
                case "data":
                    if target is None:
                        # Upstream crashes the request here.
                        raise ConnectError(
                            Code.FAILED_PRECONDITION,
                            "no process selected: send a start event before data",
                        )
                    await _write_input(target, message.data.input)
                case "keepalive":
                    pass
                case _:
                    raise ConnectError(Code.UNIMPLEMENTED, "invalid event type <nil>")

    async def _next_input(
        self, messages: AsyncIterator[pb.StreamInputRequest]
    ) -> pb.StreamInputRequest | None:
        """The client's next message; None once the daemon is stopping."""
        if self._closing:
            return None
        receiving = asyncio.ensure_future(anext(messages))
        closing = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({receiving, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
        if not receiving.done():
            receiving.cancel()
            receiving.add_done_callback(_consume_outcome)
            return None
        return receiving.result()

    async def send_signal(
        self,
        request: pb.SendSignalRequest,
        ctx: RequestContext[pb.SendSignalRequest, pb.SendSignalResponse],
    ) -> pb.SendSignalResponse:
        handle = self.table.get(request)
        signum = _SIGNALS.get(request.signal)
        if signum is None:
            name = (
                pb.Signal.Name(request.signal)
                if request.signal in pb.Signal.values()
                else str(request.signal)
            )
            raise ConnectError(Code.UNIMPLEMENTED, f"invalid signal: {name}")
        handle.signal(signum)
        return pb.SendSignalResponse()

    async def close_stdin(
        self,
        request: pb.CloseStdinRequest,
        ctx: RequestContext[pb.CloseStdinRequest, pb.CloseStdinResponse],
    ) -> pb.CloseStdinResponse:
        self.table.get(request).close_stdin()
        return pb.CloseStdinResponse()


async def _write_input(handle: ProcessHandle, data: pb.ProcessInput) -> None:
    match data.WhichOneof("input"):
        case "stdin":
            await handle.write_stdin(data.stdin)
        case "pty":
            await handle.write_pty(data.pty)
        case _:
            raise ConnectError(Code.UNIMPLEMENTED, "invalid input type <nil>")


_KEEPALIVE_EVENT = pb.ProcessEvent(keepalive=pb.ProcessEvent.KeepAlive())
_CANCELED = ConnectError(Code.CANCELED, "context canceled")
_DEADLINE = ConnectError(Code.DEADLINE_EXCEEDED, "context deadline exceeded")


async def _events(
    wrapper: type[Response], subscriber: Subscriber, pid: int, deadline: float | None
) -> AsyncIterator[Response]:
    """start, then data/keepalive, then end — for one subscriber of a process.

    Ends early with `canceled` when the client goes away and with
    `deadline_exceeded` at the request deadline; the process lives on.
    """
    loop = asyncio.get_running_loop()
    state = request_state()
    timer = None
    watcher = None
    try:
        if deadline is not None:
            if deadline <= loop.time():
                raise _DEADLINE
            timer = loop.call_at(deadline, subscriber.fail, _DEADLINE)
        watcher = loop.create_task(_fail_on_disconnect(state.disconnected, subscriber))
        yield wrapper(event=pb.ProcessEvent(start=pb.ProcessEvent.StartEvent(pid=pid)))
        keepalive = wrapper(event=_KEEPALIVE_EVENT)
        while True:
            item = await subscriber.next()
            if type(item) is tuple:
                # A wire-ready stand-in for the message (see wire.py), which both codecs encode.
                yield cast(Response, DataChunk(*item))
            elif item is KEEPALIVE:
                yield keepalive
            else:
                assert isinstance(item, ExitStatus)
                yield wrapper(event=end_event(item))
                return
    finally:
        if timer is not None:
            timer.cancel()
        if watcher is not None:
            watcher.cancel()
        subscriber.leave()


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    # The abandoned read ends with the runtime's `canceled` error; nobody needs it.
    if not future.cancelled():
        future.exception()


def _drop_subscription(launched: asyncio.Future[tuple[ProcessHandle, Subscriber]]) -> None:
    """A Start whose client left during the spawn: the process lives on, unsubscribed."""
    if launched.cancelled() or launched.exception() is not None:
        return  # nothing was started (the error had nobody left to hear it)
    _handle, subscriber = launched.result()
    subscriber.leave()


async def _fail_on_disconnect(disconnected: asyncio.Event, subscriber: Subscriber) -> None:
    await disconnected.wait()
    subscriber.fail(_CANCELED)
