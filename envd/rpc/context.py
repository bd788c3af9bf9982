"""Per-request state that Connect handlers cannot reach through connectrpc's ctx.

connectrpc hands handlers a `RequestContext` without the ASGI scope, so the
outer middleware publishes what handlers need in a ContextVar. The Connect app
runs the handler (and iterates a server stream) in the task that called it,
so the value set by the middleware is the one the handler sees.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass, field

from envd.asgi import ASGIApp, Message, Receive, Scope, Send
from envd.permissions.users import User


@dataclass(slots=True)
class RequestState:
    # Basic-auth user, validated by the middleware; None when the request had none.
    user: User | None = None
    # A unary Connect request (body = one bare message, no envelope).
    unary_body: bool = False
    # Set once the client has gone away (ASGI `http.disconnect` seen).
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


current_request: ContextVar[RequestState] = ContextVar("envd_request")


def request_state() -> RequestState:
    try:
        return current_request.get()
    except LookupError:  # called outside the middleware (unit tests)
        state = RequestState()
        current_request.set(state)
        return state


class RequestStateMiddleware:
    """Creates the request's `RequestState` and notices client disconnects.

    The Connect runtime only checks for a disconnect between two stream
    messages; a stream that waits for process output must learn it at once so
    that it can unsubscribe and free its resources.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = RequestState()
        current_request.set(state)

        async def tracking_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                state.disconnected.set()
            return message

        await self.app(scope, tracking_receive, send)
