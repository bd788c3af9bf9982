"""Per-request state that Connect handlers cannot reach through connectrpc's ctx.

connectrpc hands handlers a `RequestContext` without the ASGI scope, so the
outer middleware (envd/middleware/state.py, basic_auth.py) publishes what
handlers need in a ContextVar. The Connect app runs the handler (and iterates a
server stream) in the task that called it, so the value set by the middleware
is the one the handler sees.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass, field

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.permissions.users import User, UserLookupError, lookup_user


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


def basic_auth_or_default_user(default_user: str) -> User:
    """The user an RPC acts as: the Basic-auth user, else the default user.

    The default user is looked up only when needed, so an `/init` naming a
    user that does not exist fails the requests that would use it.
    """
    user = request_state().user
    if user is not None:
        return user
    if not default_user:
        raise ConnectError(Code.UNAUTHENTICATED, "no user specified")
    try:
        return lookup_user(default_user)
    except UserLookupError:
        raise ConnectError(
            Code.UNAUTHENTICATED, f"invalid default user: '{default_user}'"
        ) from None
