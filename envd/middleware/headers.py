"""Header values as Go's net/http hands them to handlers: optional whitespace trimmed.

Go's textproto reader strips leading and trailing spaces and tabs from every
header value (RFC 9110 §5.5 "OWS"); h11/httptools keep trailing ones. Doing
it once, outermost, makes every header we read (X-Access-Token,
Authorization, Range, Content-Type, Content-Length, Connect-Timeout-Ms,
Keepalive-Ping-Interval, X-Metadata-*, ...) follow upstream's rule.
"""

from __future__ import annotations

from envd.asgi import ASGIApp, Receive, Scope, Send

_OWS = b" \t"


def trimmed(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]] | None:
    """The header list with values trimmed, or None when nothing needed it."""
    if not any(v[:1] in (b" ", b"\t") or v[-1:] in (b" ", b"\t") for _k, v in headers):
        return None
    return [(k, v.strip(_OWS)) for k, v in headers]


class TrimHeaderValuesMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            fixed = trimmed(list(scope.get("headers", ())))
            if fixed is not None:
                scope = dict(scope)
                scope["headers"] = fixed
        await self.app(scope, receive, send)
