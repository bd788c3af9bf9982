"""Error answers of the file endpoints, byte-compatible with upstream's.

Handlers answer `{"code":<status>,"message":...}` + newline in Go's JSON
encoding; query binding and the range machinery answer plain text.
"""

from __future__ import annotations

import json

from starlette.responses import Response

# Go's encoder escapes these for safe embedding in HTML; clients see the escapes.
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


class FilesError(Exception):
    """A handler failure: HTTP status and upstream's message text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
    body = go_json({"code": status, "message": message}) + b"\n"
    return Response(
        body,
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
