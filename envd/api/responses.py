"""envd's own answers on plain HTTP, encoded as Go's net/http and encoding/json write them."""

from __future__ import annotations

import json

from starlette.responses import Response

from envd.asgi import Send

# Go's encoder escapes these for safe embedding in HTML; clients see the escapes.
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def go_json(value: object) -> bytes:
    """Compact JSON as Go's `encoding/json` writes it.

    Strings that carry undecodable path bytes (surrogate escapes) come out
    with U+FFFD in their place, as Go replaces invalid UTF-8.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":")).translate(_GO_ESCAPES)
    return to_utf8(text)


def to_utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape") if _only_escapes(text) else None
        if raw is None:
            return text.encode("utf-8", "replace")
        return raw.decode("utf-8", "replace").encode("utf-8")


def _only_escapes(text: str) -> bool:
    return all(not (0xD800 <= ord(c) <= 0xDFFF) or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json_error_body(status, message),
        status,
        headers={
            **(headers or {}),
            "Content-Type": "application/json; charset=utf-8",
            "X-Content-Type-Options": "nosniff",
        },
    )


def text_error(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    """Go's `http.Error`: plain text plus a newline."""
    return Response(
        to_utf8(text) + b"\n",
        status,
        headers={
            **(headers or {}),
            "Content-Type": "text/plain; charset=utf-8",
            "X-Content-Type-Options": "nosniff",
        },
    )


def json_error_body(status: int, message: str) -> bytes:
    """`{"code":<status>,"message":"..."}` + newline, keys in that order."""
    return go_json({"code": status, "message": message}) + b"\n"


JSON_ERROR_HEADERS = (
    (b"content-type", b"application/json; charset=utf-8"),
    (b"x-content-type-options", b"nosniff"),
)


async def send_json_error(send: Send, status: int, message: str) -> None:
    """The same error, written from ASGI middleware."""
    body = json_error_body(status, message)
    headers = [*JSON_ERROR_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
