"""`GET /files` over plain HTTP: status codes, headers, encodings, ranges,
conditional requests, bounded memory."""

from __future__ import annotations

import base64
import contextlib
import email.utils
import gzip
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.daemon import Daemon

IDENTITY = {"Accept-Encoding": "identity"}


@pytest.fixture(scope="module")
def client(envd: Daemon) -> Iterator[httpx.Client]:
    # No automatic decoding: the tests look at the bytes on the wire.
    with httpx.Client(base_url=envd.url, timeout=60) as c:
        yield c


def raw_get(
    client: httpx.Client, path: str, headers: dict[str, str]
) -> tuple[httpx.Response, bytes]:
    """The response and its body exactly as sent (httpx would gunzip `.content`)."""
    with client.stream("GET", "/files", params={"path": path}, headers=headers) as r:
        return r, b"".join(r.iter_raw())


def get(
    client: httpx.Client, path: str | None, headers: dict[str, str] | None = None, **params: str
) -> httpx.Response:
    query = {"path": path, **params} if path is not None else params
    return client.get("/files", params=query, headers={**IDENTITY, **(headers or {})})


def assert_json_error(r: httpx.Response, status: int, message: str) -> None:
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.content == b'{"code":%d,"message":%s}\n' % (status, _go_json_string(message))


def _go_json_string(text: str) -> bytes:
    out = json.dumps(text, ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        out = out.replace(ch, esc)
    return out.encode()


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "hello.txt"
    path.write_bytes(b"0123456789abcdefghij")
    os.utime(path, (1_700_000_000, 1_700_000_000))
    return path


# --- success: identity ---


def test_identity_download_headers(client: httpx.Client, text_file: Path) -> None:
    r = get(client, str(text_file))
    assert r.status_code == 200
    assert r.content == b"0123456789abcdefghij"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["content-length"] == "20"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.headers["content-disposition"] == "inline; filename=hello.txt"
    assert r.headers["last-modified"] == email.utils.formatdate(1_700_000_000, usegmt=True)
    assert "etag" not in r.headers
    assert "content-encoding" not in r.headers


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "text/plain; charset=utf-8"),
        (b"plain words\n", "text/plain; charset=utf-8"),
        (b'{"json": true}', "text/plain; charset=utf-8"),
        (b"\xff\xfeh\x00i\x00", "text/plain; charset=utf-16le"),
        (b"  <!DOCTYPE html><html>", "text/html; charset=utf-8"),
        (b"%PDF-1.7 ...", "application/pdf"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
        (b"\x1f\x8b\x08\x00", "application/x-gzip"),
        (b"\x00\x01\x02\x03binary", "application/octet-stream"),
    ],
)
def test_content_type_is_sniffed_without_extension(
    client: httpx.Client, tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "noextension"
    path.write_bytes(content)
    r = get(client, str(path))
    assert r.status_code == 200
    assert r.headers["content-type"] == expected
    assert r.headers["content-length"] == str(len(content))
    assert r.content == content


def test_content_type_follows_the_requested_name(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "data.json").write_bytes(b"\x00binary")
    (tmp_path / "link.html").symlink_to(tmp_path / "data.json")
    assert get(client, str(tmp_path / "data.json")).headers["content-type"] == "application/json"
    r = get(client, str(tmp_path / "link.html"))
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    # The name of the requested path, not of the symlink's target.
    assert r.headers["content-disposition"] == "inline; filename=link.html"
    (tmp_path / "UPPER.TXT").write_bytes(b"\x00")
    assert get(client, str(tmp_path / "UPPER.TXT")).headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("test.txt", "inline; filename=test.txt"),
        (".env", "inline; filename=.env"),
        ("a'b*c%.txt", "inline; filename=a'b*c%.txt"),
        ("my document.pdf", 'inline; filename="my document.pdf"'),
        ("x(1).txt", 'inline; filename="x(1).txt"'),
        ('file"name.txt', 'inline; filename="file\\"name.txt"'),
        ("file\\name.txt", 'inline; filename="file\\\\name.txt"'),
        ("文档.pdf", "inline; filename*=utf-8''%E6%96%87%E6%A1%A3.pdf"),
        ("ümlaut and space.txt", "inline; filename*=utf-8''%C3%BCmlaut%20and%20space.txt"),
    ],
)
def test_content_disposition_quoting(
    client: httpx.Client, tmp_path: Path, name: str, header: str
) -> None:
    (tmp_path / name).write_bytes(b"x")
    r = get(client, str(tmp_path / name))
    assert r.status_code == 200
    assert r.headers["content-disposition"] == header


def test_plus_in_query_is_a_space(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "my doc.txt").write_bytes(b"spaced")
    r = client.get(f"/files?path={tmp_path}/my+doc.txt", headers=IDENTITY)
    assert r.content == b"spaced"


def test_relative_path_uses_username_not_basic_auth(client: httpx.Client) -> None:
    home = Path("/home/user")
    name = "dl-username-test.txt"
    (home / name).write_bytes(b"user's")
    try:
        assert get(client, name, username="user").content == b"user's"
        # A valid Basic-auth user is ignored: the default user (root) applies.
        auth = {"Authorization": "Basic " + base64.b64encode(b"user:").decode()}
        assert_json_error(get(client, name, auth), 404, f"path '/root/{name}' does not exist")
    finally:
        (home / name).unlink()


def test_invalid_basic_auth_user_is_rejected_connect_style(
    client: httpx.Client, text_file: Path
) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(b"no-such-user:").decode()}
    r = get(client, str(text_file), auth)
    assert r.status_code == 401
    assert r.json() == {"code": "unauthenticated", "message": "invalid username: 'no-such-user'"}


# --- encodings ---


@pytest.mark.parametrize(
    ("accept", "gzipped"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("br", False),
        ("*", False),
        ("identity;q=0, *", True),
        ("gzip;q=0.5, identity", False),
        ("gzip;q=0", False),
        ("*;q=0, gzip", True),
        ("GZIP;Q=0.9", True),
        ("", False),
    ],
)
def test_accept_encoding_negotiation(
    client: httpx.Client, text_file: Path, accept: str, gzipped: bool
) -> None:
    r, body = raw_get(client, str(text_file), {"Accept-Encoding": accept})
    assert r.status_code == 200
    assert r.headers["vary"] == "Accept-Encoding"
    if gzipped:
        assert r.headers["content-encoding"] == "gzip"
        assert "content-length" not in r.headers
        assert "last-modified" not in r.headers
        assert "accept-ranges" not in r.headers
        assert gzip.decompress(body) == text_file.read_bytes()
    else:
        assert "content-encoding" not in r.headers
        assert body == text_file.read_bytes()


@pytest.mark.parametrize("accept", ["identity;q=0", "*;q=0", "br, identity;q=0"])
def test_identity_refused_gives_406(client: httpx.Client, text_file: Path, accept: str) -> None:
    r = get(client, str(text_file), {"Accept-Encoding": accept})
    assert_json_error(
        r, 406, "error parsing Accept-Encoding: no acceptable encoding found, supported: [gzip]"
    )
    # Only the CORS layer's Vary: the handler failed before negotiating an encoding.
    assert r.headers["vary"] == "Origin"


def test_gzip_content_type_uses_extension_only(client: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "page.html").write_bytes(b"<html></html>")
    (tmp_path / "page").write_bytes(b"<html></html>")
    r, _ = raw_get(client, str(tmp_path / "page.html"), {"Accept-Encoding": "gzip"})
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    r, body = raw_get(client, str(tmp_path / "page"), {"Accept-Encoding": "gzip"})
    assert r.headers["content-type"] == "application/octet-stream"
    assert gzip.decompress(body) == b"<html></html>"


def test_unseekable_proc_file_fails_identity_but_streams_gzip(client: httpx.Client) -> None:
    r = get(client, "/proc/self/status")
    assert r.status_code == 500
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.text == "seeker can't seek\n"
    r, body = raw_get(client, "/proc/self/status", {"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert b"Pid:" in gzip.decompress(body)


# --- ranges ---


@pytest.mark.parametrize(
    ("range_", "content_range", "body"),
    [
        ("bytes=0-4", "bytes 0-4/20", b"01234"),
        ("bytes=15-", "bytes 15-19/20", b"fghij"),
        ("bytes=-3", "bytes 17-19/20", b"hij"),
        ("bytes=18-100", "bytes 18-19/20", b"ij"),
        ("bytes=-100", "bytes 0-19/20", b"0123456789abcdefghij"),
        ("bytes= 2-3 ,", "bytes 2-3/20", b"23"),
    ],
)
def test_single_range(
    client: httpx.Client, text_file: Path, range_: str, content_range: str, body: bytes
) -> None:
    # Accept-Encoding gzip is overridden: ranges are always served identity.
    r = get(client, str(text_file), {"Range": range_, "Accept-Encoding": "gzip"})
    assert r.status_code == 206
    assert r.headers["content-range"] == content_range
    assert r.headers["content-length"] == str(len(body))
    assert "content-encoding" not in r.headers
    assert r.content == body


def test_multiple_ranges_are_multipart_byteranges(client: httpx.Client, text_file: Path) -> None:
    r = get(client, str(text_file), {"Range": "bytes=0-1,5-6,-2"})
    assert r.status_code == 206
    match = re.fullmatch(
        r"multipart/byteranges; boundary=([0-9a-f]{60})", r.headers["content-type"]
    )
    assert match
    boundary = match.group(1)
    assert int(r.headers["content-length"]) == len(r.content)
    expected = b""
    for i, (cr, data) in enumerate(
        [("bytes 0-1/20", b"01"), ("bytes 5-6/20", b"56"), ("bytes 18-19/20", b"ij")]
    ):
        expected += (
            (b"\r\n" if i else b"")
            + f"--{boundary}\r\nContent-Range: {cr}\r\n".encode()
            + b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
            + data
        )
    expected += f"\r\n--{boundary}--\r\n".encode()
    assert r.content == expected


def test_unsatisfiable_and_invalid_ranges(client: httpx.Client, text_file: Path) -> None:
    r = get(client, str(text_file), {"Range": "bytes=20-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */20"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.text == "invalid range: failed to overlap\n"
    assert "last-modified" not in r.headers
    for bad in ("bytes=5-2", "items=0-1", "bytes=x-1", "bytes=1", "bytes=--1"):
        r = get(client, str(text_file), {"Range": bad})
        assert r.status_code == 416, bad
        assert r.text == "invalid range\n"
        assert "content-range" not in r.headers


def test_range_edge_cases_serve_the_whole_file(
    client: httpx.Client, tmp_path: Path, text_file: Path
) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    r = get(client, str(empty), {"Range": "bytes=0-10"})
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")
    # More bytes asked for than the file has: ranges ignored.
    r = get(client, str(text_file), {"Range": "bytes=0-15,0-15"})
    assert (r.status_code, len(r.content)) == (200, 20)


def test_if_range(client: httpx.Client, text_file: Path) -> None:
    same = email.utils.formatdate(1_700_000_000, usegmt=True)
    older = email.utils.formatdate(1_600_000_000, usegmt=True)
    assert get(client, str(text_file), {"Range": "bytes=0-0", "If-Range": same}).status_code == 206
    assert get(client, str(text_file), {"Range": "bytes=0-0", "If-Range": older}).status_code == 200
    r = get(client, str(text_file), {"Range": "bytes=0-0", "If-Range": '"etag"'})
    assert r.status_code == 200


def test_range_when_identity_is_refused_is_406_with_vary(
    client: httpx.Client, text_file: Path
) -> None:
    r = get(client, str(text_file), {"Range": "bytes=0-1", "Accept-Encoding": "gzip, identity;q=0"})
    assert_json_error(r, 406, "identity encoding not acceptable for Range or conditional request")
    assert r.headers["vary"] == "Accept-Encoding"


# --- conditional requests ---


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": '"abc"'}, 200),
        ({"If-None-Match": '"abc", *'}, 304),
        ({"If-Modified-Since": "Wed, 15 Nov 2023 00:00:00 GMT"}, 304),
        ({"If-Modified-Since": "Tue, 14 Nov 2023 22:13:20 GMT"}, 304),  # == mtime
        ({"If-Modified-Since": "Tue, 14 Nov 2023 22:13:19 GMT"}, 200),
        ({"If-Modified-Since": "Tuesday, 14-Nov-23 23:00:00 GMT"}, 304),  # RFC 850
        ({"If-Modified-Since": "Tue Nov 14 23:00:00 2023"}, 304),  # asctime
        ({"If-Modified-Since": "garbage"}, 200),
        ({"If-None-Match": '"x"', "If-Modified-Since": "Wed, 15 Nov 2023 00:00:00 GMT"}, 200),
        ({"If-Match": '"abc"'}, 412),
        ({"If-Match": "*"}, 200),
        ({"If-Unmodified-Since": "Tue, 14 Nov 2023 22:00:00 GMT"}, 412),
        ({"If-Unmodified-Since": "Wed, 15 Nov 2023 00:00:00 GMT"}, 200),
    ],
)
def test_conditional_requests(
    client: httpx.Client, text_file: Path, headers: dict[str, str], status: int
) -> None:
    r = get(client, str(text_file), headers)
    assert r.status_code == status
    assert r.headers["vary"] == "Accept-Encoding"
    if status == 304:
        assert r.content == b""
        assert "content-type" not in r.headers
        assert r.headers["last-modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    if status == 412:
        assert r.content == b""
    if status == 200:
        assert r.content == text_file.read_bytes()


# --- errors ---


def test_missing_file_is_404(client: httpx.Client, tmp_path: Path) -> None:
    r = get(client, str(tmp_path / "missing.txt"))
    assert_json_error(r, 404, f"path '{tmp_path}/missing.txt' does not exist")
    # Only the CORS layer's Vary: the handler failed before negotiating an encoding.
    assert r.headers["vary"] == "Origin"


def test_json_error_escapes_like_go(client: httpx.Client, tmp_path: Path) -> None:
    r = get(client, str(tmp_path / "<a&b>"))
    assert r.status_code == 404
    assert b"\\u003ca\\u0026b\\u003e" in r.content


def test_directory_and_default_path_are_400(client: httpx.Client, tmp_path: Path) -> None:
    assert_json_error(get(client, str(tmp_path)), 400, f"path '{tmp_path}' is a directory")
    assert_json_error(get(client, None), 400, "path '/root' is a directory")
    assert_json_error(get(client, "", username="user"), 400, "path '/home/user' is a directory")


def test_unknown_user_is_401(client: httpx.Client, text_file: Path) -> None:
    r = get(client, str(text_file), username="nobody-here")
    assert_json_error(r, 401, "error looking up user 'nobody-here': user: unknown user nobody-here")
    r = get(client, str(text_file), username="")
    assert_json_error(r, 401, "error looking up user '': user: unknown user ")


def test_user_specific_tilde_is_400(client: httpx.Client) -> None:
    r = get(client, "~bob/x")
    assert_json_error(
        r,
        400,
        "error expanding and resolving path '~bob/x': failed to expand path '~bob/x' "
        "for user 'root': cannot expand user-specific home dir",
    )


def test_stat_errors_other_than_missing_are_500(client: httpx.Client, text_file: Path) -> None:
    r = get(client, f"{text_file}/child")
    assert_json_error(
        r,
        500,
        f"error checking if path exists '{text_file}/child': "
        f"stat {text_file}/child: not a directory",
    )


def test_query_binding_errors_are_plain_text(client: httpx.Client, text_file: Path) -> None:
    r = client.get(f"/files?path={text_file}&path=x")
    assert r.status_code == 400
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.text == (
        "Invalid format for parameter path: multiple values for single value parameter 'path'\n"
    )
    r = client.get(f"/files?path={text_file}&signature_expiration=abc")
    assert r.status_code == 400
    assert r.text == (
        "Invalid format for parameter signature_expiration: "
        'strconv.ParseInt: parsing "abc": invalid syntax\n'
    )
    r = client.get(f"/files?path={text_file}&signature_expiration=99999999999999999999")
    assert r.text.endswith("value out of range\n")
    # A pair holding `;` is dropped (Go): the path is then absent.
    r = client.get(f"/files?path={text_file};x", headers=IDENTITY)
    assert_json_error(r, 400, "path '/root' is a directory")


def test_other_methods_are_405(client: httpx.Client) -> None:
    for method in ("PUT", "DELETE", "HEAD", "PATCH"):
        r = client.request(method, "/files")
        assert r.status_code == 405
        assert r.headers.get_list("allow") == ["GET", "POST"]
        assert r.content == b""
    r = client.get("/files/compose")
    assert (r.status_code, r.headers.get_list("allow")) == (405, ["POST"])


# --- memory ---


def test_large_download_streams_with_bounded_memory(
    client: httpx.Client, envd: Daemon, tmp_path: Path
) -> None:
    size = 768 << 20
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(size)  # sparse: no disk use, reads are zeros
    daemon = psutil.Process(envd.pid)
    before = daemon.memory_info().rss
    peak = before
    for headers in (IDENTITY, {"Accept-Encoding": "gzip"}):
        received = 0
        with client.stream("GET", "/files", params={"path": str(path)}, headers=headers) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw(1 << 20):
                received += len(chunk)
                if received % (64 << 20) < len(chunk):
                    peak = max(peak, daemon.memory_info().rss)
        if headers is IDENTITY:
            assert received == size
    assert peak - before < 128 << 20, (before, peak)


def test_client_hanging_up_releases_the_file(
    client: httpx.Client, envd: Daemon, tmp_path: Path
) -> None:
    # Without noticing the hang-up, the daemon would read for minutes (a
    # 1 TiB sparse file) or forever (/dev/zero streams gzip until EOF).
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(1 << 40)
    for path, headers in ((str(huge), IDENTITY), ("/dev/zero", {"Accept-Encoding": "gzip"})):
        with client.stream("GET", "/files", params={"path": path}, headers=headers) as r:
            assert r.status_code == 200
            next(r.iter_raw(1 << 16))
            assert path in open_paths(envd.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and path in open_paths(envd.pid):
            time.sleep(0.05)
        assert path not in open_paths(envd.pid)


def open_paths(pid: int) -> set[str]:
    paths = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return paths
