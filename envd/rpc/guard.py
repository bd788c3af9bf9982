"""What reaches connectrpc's ASGI apps: headers it can decode, protocols it can serve.

connectrpc decodes every header as UTF-8 and lets the error escape
(`unknown`, a traceback); Go keeps header values as bytes, so a non-UTF-8
`Connect-Timeout-Ms` is merely not a number there. We re-encode such values
(bytes read as latin-1) so the runtime sees a string that is simply wrong.

gRPC over HTTP/1.1 needs response trailers, which uvicorn cannot send;
connectrpc raises on it. We answer it trailers-only with `unimplemented`,
a reply every gRPC client understands.
"""

from __future__ import annotations

from connectrpc.code import Code

from envd.asgi import ASGIApp, Receive, Scope, Send
from envd.rpc.context import request_state
from envd.rpc.errors import send_connect_error

GRPC_UNSUPPORTED = (
    "gRPC needs HTTP/2 trailers, which this server does not send: "
    "use the Connect or gRPC-Web protocol"
)


def _utf8(value: bytes) -> bytes:
    try:
        value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1").encode()
    return value


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode() for k, v in headers if k == name), None)


def _stream_header_error(headers: list[tuple[bytes, bytes]]) -> str | None:
    """connectrpc's own checks of the request headers, with its texts."""
    version = _header(headers, b"connect-protocol-version")
    if version is not None and version != "1":
        return f"connect-protocol-version must be '1': got '{version}'"
    timeout = _header(headers, b"connect-timeout-ms")
    if timeout:
        if len(timeout) > 10:
            return f"Invalid timeout header: '{timeout} has >10 digits"
        try:
            int(timeout)
        except ValueError:
            return f"Invalid timeout header: '{timeout}'"
    return None


def media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


class ConnectGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(_utf8(k), _utf8(v)) for k, v in scope.get("headers", ())]
        scope = {**scope, "headers": headers}
        content_type = _header(headers, b"content-type") or ""
        kind = media_type(content_type)
        if kind == "application/grpc" or kind.startswith("application/grpc+"):
            await send_connect_error(send, content_type, Code.UNIMPLEMENTED, GRPC_UNSUPPORTED)
            return
        if kind.startswith("application/connect+"):
            # connectrpc checks these before it knows it serves a stream and
            # answers with a unary error; a Connect stream error is an
            # end-stream message (HTTP 200), as connect-go sends it.
            refusal = _stream_header_error(headers)
            if refusal is not None:
                await send_connect_error(send, content_type, Code.INVALID_ARGUMENT, refusal)
                return
            # connectrpc would read compressed envelopes in an unknown encoding
            # as uncompressed ones (`internal`); connect-go refuses the encoding.
            encoding = _header(headers, b"connect-content-encoding") or ""
            if encoding not in ("", "identity", "gzip"):
                message = f'unknown compression "{encoding}": supported encodings are gzip'
                await send_connect_error(send, content_type, Code.UNIMPLEMENTED, message)
                return
        # Unary Connect carries one bare message; streams and gRPC-Web use envelopes.
        request_state().unary_body = not kind.startswith(
            ("application/connect+", "application/grpc")
        )
        await self.app(scope, receive, send)
