"""Go's `mime.ParseMediaType`, which upstream applies to `Content-Type` and to
each multipart part's `Content-Disposition` (RFC 2231 forms included).

Strings carry raw header bytes (latin-1 or surrogate-escaped UTF-8); every
non-ASCII character is outside the token alphabet, as in Go.
"""

from __future__ import annotations

import re

_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')
_SPACE = " \t\n\v\f\r"


class MediaTypeError(Exception):
    def __init__(self, message: str, media_type: str = "") -> None:
        super().__init__(message)
        # Go still returns the media type when only the parameters are bad.
        self.media_type = media_type


def _is_token_char(c: str) -> bool:
    return " " < c < "\x7f" and c not in _TSPECIALS


def _consume_token(v: str) -> tuple[str, str]:
    for i, c in enumerate(v):
        if not _is_token_char(c):
            return v[:i], v[i:]
    return v, ""


def _consume_value(v: str) -> tuple[str, str]:
    if not v:
        return "", ""
    if v[0] != '"':
        return _consume_token(v)
    out: list[str] = []
    i = 1
    while i < len(v):
        c = v[i]
        if c == '"':
            return "".join(out), v[i + 1 :]
        # A backslash escapes only a tspecial; otherwise it is literal (MSIE paths).
        if c == "\\" and i + 1 < len(v) and v[i + 1] in _TSPECIALS:
            out.append(v[i + 1])
            i += 2
            continue
        if c in "\r\n":
            return "", v
        out.append(c)
        i += 1
    return "", v


def _consume_param(v: str) -> tuple[str, str, str]:
    rest = v.lstrip(_SPACE)
    if not rest.startswith(";"):
        return "", "", v
    rest = rest[1:].lstrip(_SPACE)
    param, rest = _consume_token(rest)
    param = param.lower()
    if not param:
        return "", "", v
    rest = rest.lstrip(_SPACE)
    if not rest.startswith("="):
        return "", "", v
    rest = rest[1:].lstrip(_SPACE)
    value, rest2 = _consume_value(rest)
    if not value and rest2 == rest:
        return "", "", v
    return param, value, rest2


def _check_type(s: str) -> None:
    typ, rest = _consume_token(s)
    if not typ:
        raise MediaTypeError("mime: no media type")
    if not rest:
        return
    if not rest.startswith("/"):
        raise MediaTypeError("mime: expected slash after first token")
    subtype, rest = _consume_token(rest[1:])
    if not subtype:
        raise MediaTypeError("mime: expected token after slash")
    if rest:
        raise MediaTypeError("mime: unexpected content after media subtype")


_PCT = re.compile(rb"%([0-9a-fA-F]{2})")


def _pct_unescape(s: str) -> str | None:
    """Percent-decoding to raw bytes (kept as surrogate escapes when not UTF-8);
    None for a malformed escape."""
    raw = s.encode("utf-8", "surrogateescape")
    i = 0
    while True:
        i = raw.find(b"%", i)
        if i < 0:
            break
        if not _PCT.match(raw, i):
            return None
        i += 3
    decoded = _PCT.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    return decoded.decode("utf-8", "surrogateescape")


def _decode_2231(v: str) -> str | None:
    charset, sep, rest = v.partition("'")
    if not sep:
        return None
    _lang, sep, encoded = rest.partition("'")
    if not sep or charset.lower() not in ("us-ascii", "utf-8"):
        return None
    return _pct_unescape(encoded)


def parse_media_type(v: str) -> tuple[str, dict[str, str]]:
    base = v.partition(";")[0]
    media_type = base.lower().strip(_SPACE)
    _check_type(media_type)
    params: dict[str, str] = {}
    continuation: dict[str, dict[str, str]] = {}
    v = v[len(base) :]
    while v:
        v = v.lstrip(_SPACE)
        if not v:
            break
        key, value, rest = _consume_param(v)
        if not key:
            if rest.strip(_SPACE) == ";":
                break  # a trailing semicolon is tolerated
            raise MediaTypeError("mime: invalid media parameter", media_type)
        target = params
        if "*" in key:
            target = continuation.setdefault(key.partition("*")[0], {})
        if key in target and target[key] != value:
            raise MediaTypeError("mime: duplicate parameter name")
        target[key] = value
        v = rest
    for key, pieces in continuation.items():
        single = pieces.get(key + "*")
        if single is not None:
            decoded = _decode_2231(single)
            if decoded is not None:
                params[key] = decoded
            continue
        out: list[str] = []
        valid = False
        n = 0
        while True:
            simple = f"{key}*{n}"
            if simple in pieces:
                valid = True
                out.append(pieces[simple])
            elif simple + "*" in pieces:
                valid = True
                encoded = pieces[simple + "*"]
                part = _decode_2231(encoded) if n == 0 else _pct_unescape(encoded)
                out.append(part or "")
            else:
                break
            n += 1
        if valid:
            params[key] = "".join(out)
    return media_type, params
