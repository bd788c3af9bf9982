"""Pure parsing pieces of the file endpoints, checked against Go's results."""

from __future__ import annotations

import gzip

import pytest

from envd.api.files.encoding import EncodingError, GunzipStream, negotiate
from envd.api.files.mediatype import MediaTypeError, parse_media_type
from envd.api.files.query import QueryBindError, bind_file_params, parse_query
from envd.api.files.serve import ByteRange, RangeError, parse_http_date, parse_range


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("multipart/form-data; boundary=abc", ("multipart/form-data", {"boundary": "abc"})),
        (
            'form-data; name="file"; filename="a b/c"',
            ("form-data", {"name": "file", "filename": "a b/c"}),
        ),
        ('form-data; filename="C:\\dev\\x.txt"', ("form-data", {"filename": "C:\\dev\\x.txt"})),
        ('form-data; filename="a\\"b"', ("form-data", {"filename": 'a"b'})),
        ("form-data; filename*=UTF-8''%C3%BC", ("form-data", {"filename": "ü"})),
        ("form-data; filename*=latin1''%FC", ("form-data", {})),
        ('form-data; filename*0="a"; filename*1*=%62', ("form-data", {"filename": "ab"})),
        ("Text/Plain;", ("text/plain", {})),
        ("a/b; x=1; x=1", ("a/b", {"x": "1"})),
    ],
)
def test_parse_media_type(value: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_media_type(value) == expected


@pytest.mark.parametrize(
    ("value", "media_type"),
    [
        ("", ""),
        ("a/b/c", ""),
        ("a/b; x=1; x=2", ""),
        ("form-data; filename=a/b", "form-data"),
        ("multipart/form-data; boundary", "multipart/form-data"),
    ],
)
def test_parse_media_type_errors(value: str, media_type: str) -> None:
    with pytest.raises(MediaTypeError) as info:
        parse_media_type(value)
    assert info.value.media_type == media_type


def test_query_decoding_like_go() -> None:
    assert parse_query(b"path=a+b%2Bc&x=%zz&y;z=1&&empty=&novalue") == {
        "path": ["a b+c"],
        "empty": [""],
        "novalue": [""],
    }
    assert parse_query(b"p=%ff")["p"] == ["\udcff"]  # raw byte kept for the kernel
    params = bind_file_params(b"path=&signature_expiration=%2B42")
    assert (params.path, params.username, params.signature_expiration) == ("", None, 42)
    with pytest.raises(QueryBindError, match="invalid syntax"):
        bind_file_params(b"signature_expiration=")
    with pytest.raises(QueryBindError, match="multiple values"):
        bind_file_params(b"username=a&username=b")


@pytest.mark.parametrize(
    ("header", "size", "ranges"),
    [
        ("", 10, []),
        ("bytes=0-0", 10, [ByteRange(0, 1)]),
        ("bytes=-0", 10, [ByteRange(10, 0)]),
        ("bytes=+1-2", 10, [ByteRange(1, 2)]),
        ("bytes=1-2,20-,3-", 10, [ByteRange(1, 2), ByteRange(3, 7)]),
    ],
)
def test_parse_range(header: str, size: int, ranges: list[ByteRange]) -> None:
    assert parse_range(header, size) == ranges


def test_parse_range_errors() -> None:
    with pytest.raises(RangeError) as info:
        parse_range("bytes=10-", 10)
    assert info.value.no_overlap
    for bad in ("bytes=1_0-", "bytes=-", "bytes= 1 2-3", "bytes=99999999999999999999-"):
        with pytest.raises(RangeError) as info:
            parse_range(bad, 10)
        assert not info.value.no_overlap


def test_http_dates() -> None:
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777
    assert parse_http_date("06 Nov 1994") is None


def test_negotiation_ignores_malformed_qualities() -> None:
    assert negotiate("gzip;q= 0") == "gzip"  # Go's ParseFloat refuses the space: q stays 1
    assert negotiate("gzip;q=1e999, identity") == "gzip"  # overflow is a parse error too
    assert negotiate("gzip;q=-1, identity;q=0.5") == "identity"
    with pytest.raises(EncodingError):
        negotiate("gzip;q=0, identity;q=0")


def test_gunzip_stream_bounds_each_piece() -> None:
    data = bytes(50 << 20)
    decoder = GunzipStream()
    pieces = list(decoder.feed(gzip.compress(data)))
    decoder.finish()
    assert b"".join(pieces) == data
    assert max(len(p) for p in pieces) <= 1 << 20
