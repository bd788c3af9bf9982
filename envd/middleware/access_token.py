"""The `X-Access-Token` gate, the second layer of upstream's request pipeline."""

from __future__ import annotations

import logging
from collections.abc import Callable

from envd.api.responses import send_json_error
from envd.api.token import AccessToken, access_token_header
from envd.asgi import ASGIApp, Receive, Scope, Send

# Exact method + path pairs, no normalisation: `/files` and `/health` do their
# own checks (signed URLs) or need none, `/init` validates its body.
EXEMPT = frozenset({("GET", "/health"), ("GET", "/files"), ("POST", "/files"), ("POST", "/init")})
# After a live upgrade, until /init: only these (not /files), auth.md §2.3.
LOCKDOWN_EXEMPT = frozenset({("GET", "/health"), ("POST", "/init")})
NOT_INITIALIZED = "envd not initialized"

log = logging.getLogger("envd.middleware.access_token")

UNAUTHORIZED = (
    "unauthorized access, please provide a valid access token or method signing if supported"
)


class AccessTokenMiddleware:
    def __init__(
        self, app: ASGIApp, token: AccessToken, locked: Callable[[], bool] = lambda: False
    ) -> None:
        self.app = app
        self.token = token
        self.locked = locked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not self.token.is_set()
            and self.locked()
            and (scope["method"], scope["path"]) not in LOCKDOWN_EXEMPT
        ):
            await send_json_error(send, 401, NOT_INITIALIZED)
            return
        if (
            scope["type"] == "http"
            and self.token.is_set()
            and (scope["method"], scope["path"]) not in EXEMPT
            and not self.token.equals(access_token_header(scope))
        ):
            log.error("trying to access secured envd without correct access token")
            await send_json_error(send, 401, UNAUTHORIZED)
            return
        await self.app(scope, receive, send)
