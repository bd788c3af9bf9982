"""Content codings of the file endpoints: `Accept-Encoding` negotiation for
downloads and gzip request bodies for uploads (only gzip is supported, as
upstream)."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

GZIP = "gzip"
IDENTITY = "identity"
SUPPORTED = "[gzip]"

# Go's strconv.ParseFloat syntax (decimal, hex, inf/infinity/nan; no spaces).
_GO_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    r"|0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+"
    r"|(?i:inf|infinity|nan))"
)
_INFINITE = re.compile(r"[+-]?(?i:inf|infinity)")

# A gzip member inflates at most ~1032x: never hand out more than this per piece.
_MAX_PIECE = 1 << 20


class EncodingError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Coding:
    name: str
    quality: float


def _go_parse_float(text: str) -> float | None:
    if not _GO_FLOAT.fullmatch(text):
        return None
    value = float.fromhex(text) if "x" in text.lower() else float(text)
    if math.isinf(value) and not _INFINITE.fullmatch(text):
        return None  # Go reports overflow as an error: the quality stays 1.0
    return value


def _parse_coding(item: str) -> _Coding:
    name, sep, params = item.strip().partition(";")
    quality = 1.0
    if sep:
        for raw_param in params.split(";"):
            param = raw_param.strip()
            if param[:2].lower() == "q=":
                q = _go_parse_float(param[2:])
                if q is not None:
                    quality = q
    return _Coding(name.strip().lower(), quality)


def _identity_rejected(codings: list[_Coding]) -> bool:
    """RFC 9110: identity is acceptable unless `identity;q=0`, or `*;q=0`
    without an `identity` of non-zero quality."""
    rejected = any(c.name == IDENTITY and c.quality == 0 for c in codings)
    accepted = any(c.name == IDENTITY and c.quality != 0 for c in codings)
    wildcard_rejected = any(c.name == "*" and c.quality == 0 for c in codings)
    return rejected or (wildcard_rejected and not accepted)


def identity_acceptable(accept_encoding: str | None) -> bool:
    if not accept_encoding:
        return True
    return not _identity_rejected([_parse_coding(i) for i in accept_encoding.split(",")])


def negotiate(accept_encoding: str | None) -> str:
    """`gzip` or `identity` for a download; EncodingError when neither is acceptable."""
    if not accept_encoding:
        return IDENTITY
    codings = [_parse_coding(i) for i in accept_encoding.split(",")]
    rejected = _identity_rejected(codings)
    # Highest quality first, stable among equals; NaN sorts last (Go's cmp.Compare).
    codings.sort(key=lambda c: (not math.isnan(c.quality), c.quality), reverse=True)
    for coding in codings:
        if coding.quality == 0:
            continue
        if coding.name == IDENTITY:
            return IDENTITY
        if coding.name == "*":
            return GZIP if rejected else IDENTITY
        if coding.name == GZIP:
            return GZIP
    if not rejected:
        return IDENTITY
    raise EncodingError(f"no acceptable encoding found, supported: {SUPPORTED}")


def request_encoding(content_encoding: str | None) -> str:
    """`gzip` or `identity` for an upload body; EncodingError for anything else."""
    if not content_encoding:
        return IDENTITY
    name = content_encoding.partition(";")[0].strip().lower()
    if name in (IDENTITY, GZIP):
        return name
    raise EncodingError(f"unsupported Content-Encoding: {content_encoding}, supported: {SUPPORTED}")


def _zlib_message(e: zlib.error) -> str:
    text = str(e)
    if "header" in text:
        return "gzip: invalid header"
    if "data check" in text or "length check" in text:
        return "gzip: invalid checksum"
    return "flate: corrupt input"


class GunzipStream:
    """Incremental gzip decoder: several members decode as one stream (as Go's
    reader does), output is handed out in bounded pieces."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            while True:
                if self._d.eof and data:
                    # The previous member ended: what follows must be another member.
                    self._d = zlib.decompressobj(wbits=31)
                self._started = self._started or bool(data)
                piece = self._d.decompress(data, _MAX_PIECE)
                if piece:
                    yield piece
                if self._d.eof:
                    data = self._d.unused_data
                    if not data:
                        return
                    continue
                data = self._d.unconsumed_tail
                # A full piece may leave output pending inside zlib: ask again.
                if not data and len(piece) < _MAX_PIECE:
                    return
        except zlib.error as e:
            raise EncodingError(_zlib_message(e)) from None

    def finish(self) -> None:
        """At end of input: a member cut short is `unexpected EOF`."""
        if self._started and not self._d.eof:
            raise EncodingError("unexpected EOF")


async def check_gzip_header(
    body: AsyncIterator[bytes],
) -> tuple[bytes, AsyncIterator[bytes]]:
    """Reads the fixed 10-byte gzip header before anything else happens, as Go's
    `gzip.NewReader` does; returns the bytes read and the rest of the body."""
    head = b""
    async for chunk in body:
        head += chunk
        if len(head) >= 10:
            break
    if not head:
        raise EncodingError("failed to create gzip reader: EOF")
    if len(head) < 10:
        raise EncodingError("failed to create gzip reader: unexpected EOF")
    if head[:3] != b"\x1f\x8b\x08":
        raise EncodingError("failed to create gzip reader: gzip: invalid header")
    return head, body


async def gunzip(head: bytes, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    decoder = GunzipStream()
    for piece in decoder.feed(head):
        yield piece
    async for chunk in body:
        for piece in decoder.feed(chunk):
            yield piece
    decoder.finish()
