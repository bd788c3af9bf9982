"""Query parameters of `GET`/`POST /files`, decoded and bound as upstream does.

Upstream decodes with Go's `url.ParseQuery` (`+` is a space; a pair holding
`;` or a bad `%` escape is dropped) and binds with oapi-codegen, which
refuses a repeated parameter and a non-integer `signature_expiration` with a
plain-text 400 before the handler runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from envd.fs.errors import go_quote

_HEX = b"0123456789abcdefABCDEF"
_INT = re.compile(r"[+-]?[0-9]+")
_INT64_DIGITS = 19
_INT64_MAX = (1 << 63) - 1


class QueryBindError(Exception):
    """Text of the plain-text 400 (`Invalid format for parameter ...`)."""


@dataclass(frozen=True, slots=True)
class FileParams:
    # None = absent; "" = present but empty (they resolve differently).
    path: str | None = None
    username: str | None = None
    signature: str | None = None
    signature_expiration: int | None = None


def _unescape(raw: bytes) -> str | None:
    """Go's `QueryUnescape`: None for a malformed `%` escape. Bytes that are
    not UTF-8 survive as surrogate escapes, so paths reach the kernel intact."""
    if b"%" not in raw:
        return raw.replace(b"+", b" ").decode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # %
            if i + 2 >= len(raw):
                return None
            hi, lo = raw[i + 1], raw[i + 2]
            if hi not in _HEX or lo not in _HEX:
                return None
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
            continue
        out.append(0x20 if c == 0x2B else c)
        i += 1
    return out.decode("utf-8", "surrogateescape")


def parse_query(raw: bytes) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for pair in raw.split(b"&"):
        if not pair or b";" in pair:
            continue
        key, _, value = pair.partition(b"=")
        k, v = _unescape(key), _unescape(value)
        if k is None or v is None:
            continue
        values.setdefault(k, []).append(v)
    return values


def _single(values: dict[str, list[str]], name: str) -> str | None:
    found = values.get(name)
    if not found:
        return None
    if len(found) > 1:
        raise QueryBindError(
            f"Invalid format for parameter {name}: "
            f"multiple values for single value parameter '{name}'"
        )
    return found[0]


def _parse_int64(name: str, text: str) -> int:
    if not _INT.fullmatch(text):
        raise QueryBindError(
            f"Invalid format for parameter {name}: "
            f"strconv.ParseInt: parsing {go_quote(text)}: invalid syntax"
        )
    # Out of range however long: int() would refuse more than 4300 digits.
    too_long = len(text.lstrip("+-").lstrip("0")) > _INT64_DIGITS
    number = 0 if too_long else int(text)
    if too_long or not -_INT64_MAX - 1 <= number <= _INT64_MAX:
        raise QueryBindError(
            f"Invalid format for parameter {name}: "
            f"strconv.ParseInt: parsing {go_quote(text)}: value out of range"
        )
    return number


def bind_file_params(raw_query: bytes) -> FileParams:
    """Raises `QueryBindError` for the first bad parameter, in upstream's order."""
    values = parse_query(raw_query)
    path = _single(values, "path")
    username = _single(values, "username")
    signature = _single(values, "signature")
    expiration = _single(values, "signature_expiration")
    return FileParams(
        path=path,
        username=username,
        signature=signature,
        signature_expiration=None
        if expiration is None
        else _parse_int64("signature_expiration", expiration),
    )
