"""Range and conditional requests answered as Go's `http.ServeContent` does
for a file without an ETag (upstream serves identity downloads with it)."""

from __future__ import annotations

import calendar
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

_TRIM = " \t\r\n"
_INT = re.compile(r"[+-]?[0-9]+")
_INT64_DIGITS = 19
_INT64_MAX = (1 << 63) - 1

_DATE_FORMATS = (
    "%a, %d %b %Y %H:%M:%S GMT",  # IMF-fixdate (Go's http.TimeFormat)
    "%A, %d-%b-%y %H:%M:%S",  # RFC 850, zone handled below
    "%a %b %d %H:%M:%S %Y",  # ANSI C asctime
)
_RFC850_ZONE = re.compile(r"(.*) [A-Z]{3,5}")


def format_http_date(seconds: int) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(seconds))


def parse_http_date(text: str) -> int | None:
    """Unix seconds of a date in any of the three formats Go's `http.ParseTime` takes."""
    candidates = [(text, _DATE_FORMATS[0]), (text, _DATE_FORMATS[2])]
    match = _RFC850_ZONE.fullmatch(text)
    if match:
        # Go reads an unknown zone abbreviation as UTC; GMT is UTC anyway.
        candidates.insert(1, (match.group(1), _DATE_FORMATS[1]))
    for value, fmt in candidates:
        try:
            return calendar.timegm(time.strptime(value, fmt))
        except ValueError:
            continue
    return None


class _Cond(Enum):
    NONE = 0
    TRUE = 1
    FALSE = 2


def _scan_etag(s: str) -> tuple[str, str]:
    s = s.strip(_TRIM)
    start = 2 if s.startswith("W/") else 0
    if len(s) - start < 2 or s[start] != '"':
        return "", ""
    for i in range(start + 1, len(s)):
        c = ord(s[i])
        if c == 0x22:
            return s[: i + 1], s[i + 1 :]
        if not (c == 0x21 or 0x23 <= c <= 0x7E or c >= 0x80):
            return "", ""
    return "", ""


def _star_reachable(value: str) -> bool:
    """Whether a list of entity tags reaches `*` (no ETag is ever sent, so no
    tag matches; only `*` can)."""
    while True:
        value = value.strip(_TRIM)
        if not value:
            return False
        if value[0] == ",":
            value = value[1:]
            continue
        if value[0] == "*":
            return True
        etag, value = _scan_etag(value)
        if not etag:
            return False


def _date_cond(header: str | None, mtime: int | None) -> _Cond:
    """TRUE when the file is not newer than the header's date (second precision)."""
    if not header or mtime is None:
        return _Cond.NONE
    when = parse_http_date(header)
    if when is None:
        return _Cond.NONE
    return _Cond.TRUE if mtime <= when else _Cond.FALSE


class Outcome(Enum):
    SERVE = 0
    NOT_MODIFIED = 304
    PRECONDITION_FAILED = 412


def check_preconditions(get: Callable[[str], str | None], mtime: int | None) -> tuple[Outcome, str]:
    """`get(name)` gives a request header; `mtime` is None when Go treats it as
    zero. Returns the outcome and the Range header still to honour."""
    if_match = get("if-match")
    if if_match:
        cond = _Cond.TRUE if _star_reachable(if_match) else _Cond.FALSE
    else:
        cond = _date_cond(get("if-unmodified-since"), mtime)
    if cond is _Cond.FALSE:
        return Outcome.PRECONDITION_FAILED, ""
    if_none_match = get("if-none-match")
    if if_none_match:
        if _star_reachable(if_none_match):
            return Outcome.NOT_MODIFIED, ""
    elif _date_cond(get("if-modified-since"), mtime) is _Cond.TRUE:
        return Outcome.NOT_MODIFIED, ""
    range_header = get("range") or ""
    if range_header and not _if_range_holds(get("if-range"), mtime):
        range_header = ""
    return Outcome.SERVE, range_header


def _if_range_holds(if_range: str | None, mtime: int | None) -> bool:
    if not if_range:
        return True
    etag, _ = _scan_etag(if_range)
    if etag:
        return False
    when = parse_http_date(if_range)
    return when is not None and when == (mtime or 0)


class RangeError(Exception):
    """Text of the 416 answer; `no_overlap` adds `Content-Range: bytes */size`."""

    def __init__(self, message: str, no_overlap: bool = False) -> None:
        super().__init__(message)
        self.no_overlap = no_overlap


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    length: int

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.start + self.length - 1}/{size}"


def _parse_int64(text: str) -> int | None:
    if not _INT.fullmatch(text):
        return None
    # Out of range however long: int() would refuse more than 4300 digits.
    if len(text.lstrip("+-").lstrip("0")) > _INT64_DIGITS:
        return None
    value = int(text)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def parse_range(header: str, size: int) -> list[ByteRange]:
    """Go's `parseRange`; raises RangeError."""
    if not header:
        return []
    if not header.startswith("bytes="):
        raise RangeError("invalid range")
    ranges: list[ByteRange] = []
    no_overlap = False
    for raw_item in header[len("bytes=") :].split(","):
        item = raw_item.strip(_TRIM)
        if not item:
            continue
        start_text, sep, end_text = item.partition("-")
        if not sep:
            raise RangeError("invalid range")
        start_text, end_text = start_text.strip(_TRIM), end_text.strip(_TRIM)
        if not start_text:
            # A suffix: the last N bytes.
            suffix = _parse_int64(end_text) if end_text and end_text[0] != "-" else None
            if suffix is None or suffix < 0:
                raise RangeError("invalid range")
            suffix = min(suffix, size)
            ranges.append(ByteRange(size - suffix, suffix))
            continue
        start = _parse_int64(start_text)
        if start is None or start < 0:
            raise RangeError("invalid range")
        if start >= size:
            no_overlap = True
            continue
        if not end_text:
            ranges.append(ByteRange(start, size - start))
            continue
        end = _parse_int64(end_text)
        if end is None or start > end:
            raise RangeError("invalid range")
        end = min(end, size - 1)
        ranges.append(ByteRange(start, end - start + 1))
    if no_overlap and not ranges:
        raise RangeError("invalid range: failed to overlap", no_overlap=True)
    return ranges


@dataclass(frozen=True, slots=True)
class Segment:
    """Part of a response body: literal bytes, or `length` bytes of the file at `offset`."""

    data: bytes = b""
    offset: int = 0
    length: int = 0


def multipart_byteranges(
    ranges: list[ByteRange], content_type: str, size: int
) -> tuple[str, list[Segment], int]:
    """Body of a multi-range 206 as Go's multipart writer lays it out:
    (boundary, segments, total length)."""
    boundary = secrets.token_hex(30)
    segments: list[Segment] = []
    for i, r in enumerate(ranges):
        lead = "\r\n" if i else ""
        head = (
            f"{lead}--{boundary}\r\n"
            f"Content-Range: {r.content_range(size)}\r\n"
            f"Content-Type: {content_type}\r\n\r\n"
        )
        segments.append(Segment(data=head.encode("latin-1")))
        segments.append(Segment(offset=r.start, length=r.length))
    segments.append(Segment(data=f"\r\n--{boundary}--\r\n".encode("latin-1")))
    total = sum(len(s.data) + s.length for s in segments)
    return boundary, segments, total
