"""The outermost middleware: a fresh `RequestState` per request (envd/rpc/context.py)."""

from __future__ import annotations

from envd.asgi import ASGIApp, Message, Receive, Scope, Send
from envd.rpc.context import RequestState, current_request


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
