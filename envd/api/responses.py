"""envd's own JSON error body, encoded as Go's encoding/json writes it."""

from __future__ import annotations

import json

from starlette.responses import Response

from envd.asgi import Send

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def json_error_body(status: int, message: str) -> bytes:
    """`{"code":<status>,"message":"..."}` + newline, keys in that order."""
    # Go writes invalid UTF-8 (here: surrogate-escaped bytes) as U+FFFD.
    clean = message.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = json.dumps({"code": status, "message": clean}, ensure_ascii=False, separators=(",", ":"))
    return (text.translate(_GO_ESCAPES) + "\n").encode()


JSON_ERROR_HEADERS = (
    (b"content-type", b"application/json; charset=utf-8"),
    (b"x-content-type-options", b"nosniff"),
)


def json_error(status: int, message: str) -> Response:
    return Response(
        json_error_body(status, message),
        status_code=status,
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def send_json_error(send: Send, status: int, message: str) -> None:
    """The same error, written from ASGI middleware."""
    body = json_error_body(status, message)
    headers = [*JSON_ERROR_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
