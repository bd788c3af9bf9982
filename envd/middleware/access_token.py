"""The `X-Access-Token` gate, the second layer of upstream's request pipeline."""

from __future__ import annotations

import logging

from envd.api.responses import send_json_error
from envd.api.token import AccessToken, access_token_header
from envd.asgi import ASGIApp, Receive, Scope, Send

# Exact method + path pairs, no normalisation: `/files` and `/health` do their
# own checks (signed URLs) or need none, `/init` validates its body.
EXEMPT = frozenset({("GET", "/health"), ("GET", "/files"), ("POST", "/files"), ("POST", "/init")})

log = logging.getLogger("envd.middleware.access_token")

UNAUTHORIZED = (
    "unauthorized access, please provide a valid access token or method signing if supported"
)


class AccessTokenMiddleware:
    def __init__(self, app: ASGIApp, token: AccessToken) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
