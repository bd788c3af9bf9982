"""CORS for the browser SDK, answering as upstream's rs/cors configuration does.

Any origin (answered with `*`), methods HEAD/GET/POST/PUT/PATCH/DELETE (OPTIONS
implicitly), any request header, Connect's gRPC headers exposed, max age 2 h,
no credentials. Preflights are answered here and never reach the token gate.
"""

from __future__ import annotations

from envd.asgi import ASGIApp, Message, Receive, Scope, Send

ALLOWED_METHODS = frozenset({"HEAD", "GET", "POST", "PUT", "PATCH", "DELETE"})
EXPOSED_HEADERS = (
    b"Grpc-Status, Grpc-Message, Grpc-Status-Details-Bin, Location, Cache-Control, "
    b"X-Content-Type-Options"
)
MAX_AGE = b"7200"
_PREFLIGHT_VARY = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def _method_allowed(method: str) -> bool:
    return method == "OPTIONS" or method in ALLOWED_METHODS


class CORSMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = b""
        request_method: bytes | None = None
        request_headers: list[bytes] = []
        for key, value in scope["headers"]:
            if key == b"origin" and not origin:
                origin = value
            elif key == b"access-control-request-method" and request_method is None:
                request_method = value
            elif key == b"access-control-request-headers":
                request_headers.append(value)

        if scope["method"] == "OPTIONS" and request_method:
            await self._preflight(send, origin, request_method, request_headers)
            return

        allow = bool(origin) and _method_allowed(scope["method"])

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                # rs/cors sets `Vary: Origin` before the handler runs; a handler
                # that sets Vary itself (GET /files) replaces it, as Go's Header.Set does.
                if not any(key.lower() == b"vary" for key, _ in headers):
                    headers.append((b"vary", b"Origin"))
                if allow:
                    headers.append((b"access-control-allow-origin", b"*"))
                    headers.append((b"access-control-expose-headers", EXPOSED_HEADERS))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(
        self, send: Send, origin: bytes, method: bytes, request_headers: list[bytes]
    ) -> None:
        headers = [(b"vary", _PREFLIGHT_VARY)]
        if origin and _method_allowed(method.decode("latin-1")):
            headers.append((b"access-control-allow-origin", b"*"))
            headers.append((b"access-control-allow-methods", method))
            if request_headers and request_headers[0]:
                headers.extend((b"access-control-allow-headers", v) for v in request_headers)
            headers.append((b"access-control-max-age", MAX_AGE))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
