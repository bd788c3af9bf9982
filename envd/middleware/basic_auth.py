"""The `Authorization: Basic` user, parsed as Go's `Request.BasicAuth` does."""

from __future__ import annotations

import base64
import binascii

from connectrpc.code import Code

from envd.asgi import ASGIApp, Receive, Scope, Send, header
from envd.permissions.users import UserLookupError, lookup_user
from envd.rpc.context import request_state
from envd.rpc.errors import send_connect_error


def parse_basic_auth(value: str | None) -> str | None:
    """Username from the header, or None when the header names no user.

    Scheme `Basic ` is case-insensitive with exactly one space; the payload is
    strict padded standard base64 and must contain `:`. Anything else is "no
    user", never an error.
    """
    if not value or len(value) < 6 or value[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:], validate=True)
    except (binascii.Error, ValueError):
        return None
    text = decoded.decode("utf-8", errors="surrogateescape")
    username, sep, _password = text.partition(":")
    return username if sep else None


class BasicAuthMiddleware:
    """Resolves the Basic-auth user for every route; an unknown one is rejected.

    The rejection is a Connect `unauthenticated` error in the framing that the
    request's protocol expects, on every route (upstream's authn middleware).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            username = parse_basic_auth(header(scope, b"authorization"))
            if username is not None:
                try:
                    request_state().user = lookup_user(username)
                except UserLookupError:
                    await send_connect_error(
                        send,
                        header(scope, b"content-type") or "",
                        Code.UNAUTHENTICATED,
                        f"invalid username: '{username}'",
                    )
                    return
        await self.app(scope, receive, send)
