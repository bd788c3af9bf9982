"""Hostile input on the HTTP routes (`/files`, `/files/compose`, `/init`) against a
real daemon of its own: each input class gets its status and the JSON
`{"message","code"}` body, the daemon stays healthy, its RSS bounded, and its
log free of tracebacks.

Raw sockets are used where httpx would refuse to send the input.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from envd.api import signing
from tests.daemon import Daemon

OCTET = {"Content-Type": "application/octet-stream"}
# RSS growth allowed for one request, and for the whole module.
RSS_STEP = 64 << 20


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with Daemon() as d:
        yield d


TOKEN = "hostile-test-token"


@pytest.fixture(scope="module")
def secured() -> Iterator[Daemon]:
    """A daemon of its own whose first /init set an access token."""
    with Daemon() as d:
        r = httpx.post(d.url + "/init", json={"accessToken": TOKEN}, timeout=30)
        assert r.status_code == 204, r.text
        yield d


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.url, timeout=60) as c:
        yield c


def rss(daemon: Daemon) -> int:
    return int(psutil.Process(daemon.pid).memory_info().rss)


@pytest.fixture(autouse=True)
def healthy_afterwards(daemon: Daemon) -> Iterator[None]:
    """Every test: the daemon answers /health after it, and logged no traceback."""
    start = len(daemon.output())
    yield
    assert httpx.get(daemon.url + "/health", timeout=10).status_code == 204
    log = daemon.output()[start:]
    assert "Traceback" not in log, log[-3000:]
    assert "ClientDisconnect" not in log, log[-3000:]


def assert_json(r: httpx.Response, status: int, message: str | None = None) -> dict[str, object]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"message", "code"}, body
    assert body["code"] == status
    assert isinstance(body["message"], str)
    assert body["message"], body
    if message is not None:
        assert body["message"] == message
    return dict(body)


def raw_request(
    daemon: Daemon, data: bytes, read_timeout: float = 10, half_close: bool = True
) -> bytes:
    """Sends `data` as is (then ends the sending side, with `half_close`); returns
    everything the daemon answers until it closes, resets or goes quiet."""
    out = b""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=read_timeout) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                out += chunk
        except OSError:  # reset, broken pipe, timeout: the answer so far
            pass
    return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def json_body_of(response: bytes) -> dict[str, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), head
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    value = json.loads(body)
    assert set(value) == {"message", "code"}, value
    return dict(value)


# --- paths ---


def test_nul_in_path_on_download_and_upload(
    daemon: Daemon, client: httpx.Client, tmp_path: Path
) -> None:
    assert_json(client.get("/files", params={"path": f"{tmp_path}/a\x00b"}), 400)
    r = client.post("/files", params={"path": f"{tmp_path}/a\x00b"}, content=b"x", headers=OCTET)
    assert_json(r, 400)
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="'
        + f"{tmp_path}/a\x00b".encode()
        + b'"\r\n\r\nx\r\n--B--\r\n'
    )
    headers = {"Content-Type": "multipart/form-data; boundary=B"}
    assert_json(client.post("/files", content=body, headers=headers), 400)
    assert os.listdir(tmp_path) == []


def test_non_utf8_path_with_a_signature(daemon: Daemon, tmp_path: Path) -> None:
    for method in ("GET", "POST"):
        query = f"path={tmp_path}/%ff%fe&signature=v1_x&signature_expiration=1"
        r = raw_request(
            daemon,
            f"{method} /files?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n".encode(),
            half_close=False,
        )
        # Without a token set, the signature is not checked: the file is missing
        # (GET) or written under those bytes (POST), never a 500.
        assert status_of(r) == (404 if method == "GET" else 200), r[:300]
        if method == "GET":
            json_body_of(r)
    assert os.listdir(tmp_path.as_posix().encode()) == [b"\xff\xfe"]


def test_huge_integers(daemon: Daemon, client: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"0123456789")
    digits = "9" * 5000
    identity = {"Accept-Encoding": "identity"}
    # Out of int64: Go's parseRange refuses the spec, 416 plain text as upstream.
    for spec in (f"bytes=0-{digits}", f"bytes={digits}-", f"bytes=-{digits}"):
        r = client.get("/files", params={"path": str(target)}, headers={**identity, "Range": spec})
        assert (r.status_code, r.text) == (416, "invalid range\n"), spec[:20]
    # A Content-Length that long is the HTTP parser's framing error, before any handler.
    answer = raw_request(
        daemon,
        f"POST /files?path={tmp_path}/g HTTP/1.1\r\nHost: x\r\nContent-Length: {digits}\r\n"
        "Content-Type: application/octet-stream\r\n\r\nabc".encode(),
        half_close=False,
    )
    assert status_of(answer) == 400
    # Query binding errors are plain text, as upstream's generated binder writes them.
    r = client.get(
        "/files",
        params={"path": str(target), "signature_expiration": digits, "signature": "v1_x"},
    )
    assert r.status_code == 400
    assert r.text.startswith(
        "Invalid format for parameter signature_expiration: strconv.ParseInt: parsing "
    )
    assert r.text.endswith(": value out of range\n")


def test_proc_self_mem_and_other_special_files(client: httpx.Client) -> None:
    # Opens, but every read fails (EIO): a JSON 500 before anything is sent.
    for encoding in ("identity", "gzip"):
        r = client.get(
            "/files", params={"path": "/proc/self/mem"}, headers={"Accept-Encoding": encoding}
        )
        assert_json(r, 500)
        assert str(r.json()["message"]).endswith("input/output error")
    # Cannot seek to its end: http.ServeContent's plain-text answer, as upstream.
    r = client.get(
        "/files", params={"path": "/proc/self/pagemap"}, headers={"Accept-Encoding": "identity"}
    )
    assert (r.status_code, r.text) == (500, "seeker can't seek\n")
    assert_json(client.get("/files", params={"path": "/sys/kernel"}), 400)
    # A character device reports size 0: an empty 200 (a Range past it is ignored).
    r = client.get(
        "/files",
        params={"path": "/dev/zero"},
        headers={"Range": "bytes=0-9", "Accept-Encoding": "identity"},
    )
    assert (r.status_code, r.content) == (200, b"")


def test_compose_hostile_bodies(client: httpx.Client, tmp_path: Path) -> None:
    for body in (b"[" * 100_000, b"{" * 100_000, b'{"source_paths":' + b"[" * 100_000):
        assert_json(client.post("/files/compose", content=body), 400)
    assert_json(client.post("/files/compose", content=b'{"destination":"\xff\xfe"}'), 400)
    for body in (b"[]", b'"x"', b"  ", b"1e99999"):
        assert_json(client.post("/files/compose", content=body), 400)
    # NUL in paths
    (tmp_path / "s").write_bytes(b"s")
    request = {"source_paths": [str(tmp_path / "s")], "destination": f"{tmp_path}/d\x00"}
    assert_json(client.post("/files/compose", json=request), 400)
    request = {"source_paths": [f"{tmp_path}/s\x00"], "destination": str(tmp_path / "d")}
    assert_json(client.post("/files/compose", json=request), 400)
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_compose_oversized_body(daemon: Daemon, client: httpx.Client) -> None:
    before = rss(daemon)
    r = client.post("/files/compose", content=b" " * (40 << 20))
    assert r.status_code in (400, 413)
    assert_json(r, r.status_code)
    assert rss(daemon) - before < RSS_STEP


def test_init_hostile_bodies(daemon: Daemon, client: httpx.Client) -> None:
    for body in (
        b"[" * 100_000,
        b'{"envVars":{"\xff":"x"}}',
        b"\xff\xfe",
        b'{"timestamp":1' + b"0" * 5000 + b"}",
    ):
        r = client.post("/init", content=body)
        assert r.status_code == 400, (body[:40], r.status_code, r.text)


def _post_init_streaming(daemon: Daemon, size: int, declared: bool) -> tuple[int, int]:
    """Status and peak RSS growth for a `size`-byte body with a wrong token."""
    before = rss(daemon)
    peak = before
    head = b'{"accessToken":"wrong","envVars":{"A":"'
    chunk = b"x" * (1 << 20)

    def body() -> Iterator[bytes]:
        nonlocal peak
        yield head
        sent = len(head)
        while sent < size:
            yield chunk
            sent += len(chunk)
            peak = max(peak, rss(daemon))

    headers = {"Content-Length": str(size)} if declared else {}
    if declared:
        payload: bytes | Iterator[bytes] = head + b"x" * (size - len(head))
    else:
        payload = body()
    try:
        r = httpx.post(daemon.url + "/init", content=payload, headers=headers, timeout=120)
        status = r.status_code
    except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
        status = -1  # the daemon answered and closed before the whole body was sent
    peak = max(peak, rss(daemon))
    return status, peak - before


def test_init_body_limit_before_the_token(secured: Daemon) -> None:
    # A wrong token in a huge body: declared, refused at once; streamed
    # (chunked, 1 GiB), refused once 1 MiB is exceeded. Memory stays flat.
    status, growth = _post_init_streaming(secured, 200 << 20, declared=True)
    assert status in (413, -1)
    assert growth < RSS_STEP
    status, growth = _post_init_streaming(secured, 1 << 30, declared=False)
    assert status in (413, -1)
    assert growth < RSS_STEP
    r = httpx.post(secured.url + "/init", content=b" " * ((1 << 20) + 1), timeout=30)
    assert_json(r, 413, "request body larger than 1048576 bytes")
    assert r.headers["x-envd-version"]
    # Within the limit, the token decides, as before.
    r = httpx.post(secured.url + "/init", json={"accessToken": "wrong"}, timeout=30)
    assert (r.status_code, r.text) == (401, "access token validation failed")
    r = httpx.post(secured.url + "/init", json={"accessToken": TOKEN}, timeout=30)
    assert r.status_code == 204
    assert "Traceback" not in secured.output()


def test_signed_url_with_non_utf8_path(secured: Daemon, tmp_path: Path) -> None:
    raw_path = tmp_path.as_posix().encode() + b"/\xff\xfe"
    quoted = "".join(f"%{b:02X}" for b in raw_path)
    for method, operation in (("POST", signing.WRITE), ("GET", signing.READ)):
        sig = signing.signature(os.fsdecode(raw_path), operation, "root", TOKEN)
        for signature, status in (("v1_wrong", 401), (sig, 200)):
            query = f"path={quoted}&username=root&signature={urllib.parse.quote(signature)}"
            r = raw_request(
                secured,
                f"{method} /files?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                "x".encode(),
                half_close=False,
            )
            assert status_of(r) == status, r[:300]
            if status == 401:
                assert json_body_of(r) == {"code": 401, "message": "invalid signature"}
    assert Path(os.fsdecode(raw_path)).read_bytes() == b"x"
    assert "Traceback" not in secured.output()


def test_init_large_but_valid_body_still_works(tmp_path: Path) -> None:
    # Its own daemon (/init changes state), with CA paths in the test's directory.
    bundle, extra = tmp_path / "bundle.crt", tmp_path / "extra" / "e2b.crt"
    bundle.write_text("")
    ca = "-----BEGIN CERTIFICATE-----\n" + "QUFB" * 150_000 + "\n-----END CERTIFICATE-----\n"
    envs = {f"VAR_{i}": "v" * 30 for i in range(8000)}
    body = json.dumps({"envVars": envs, "caBundle": ca})
    assert 900_000 < len(body) < 1 << 20
    with Daemon("-ca-bundle", str(bundle), "-ca-extra", str(extra)) as d:
        r = httpx.post(d.url + "/init", content=body, timeout=60)
        assert r.status_code == 204, r.text
        assert httpx.get(d.url + "/envs", timeout=10).json()["VAR_7999"] == "v" * 30
        assert "QUFB" * 1000 in bundle.read_text()


def test_gzip_bomb_upload_is_streamed(daemon: Daemon, client: httpx.Client, tmp_path: Path) -> None:
    # 1 GiB of zeros in ~1 MiB: decoded as it is written, never held in memory.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(bytes(1 << 20)) for _ in range(1024)]
    bomb = b"".join(parts) + compressor.flush()
    before = rss(daemon)
    r = client.post(
        "/files",
        params={"path": str(tmp_path / "bomb")},
        content=bomb,
        headers={**OCTET, "Content-Encoding": "gzip"},
    )
    assert r.status_code == 200, r.text
    assert (tmp_path / "bomb").stat().st_size == 1 << 30
    assert rss(daemon) - before < RSS_STEP
    (tmp_path / "bomb").unlink()
    r = client.post(
        "/files",
        params={"path": str(tmp_path / "bad")},
        content=b"\x1f\x8b\x08\x00garbage",
        headers={**OCTET, "Content-Encoding": "gzip"},
    )
    assert r.status_code in (400, 500)
    assert_json(r, r.status_code)
    assert not (tmp_path / "bad").exists()
    assert gzip  # the module is used for the well-formed case above


def test_malformed_chunked_bodies(daemon: Daemon, tmp_path: Path) -> None:
    tails = (b"zz\r\nxx\r\n", b"5\r\nab", b"f" * 20 + b"\r\n", b"3\r\nabcdef\r\n0\r\n\r\n")
    for i, tail in enumerate(tails):
        # A path of its own: the parser's 400 can come back before the handler
        # of that request has even created its file, so a shared path would let
        # one request's late handler meet the next request's file.
        path = tmp_path / f"c{i}"
        r = raw_request(
            daemon,
            f"POST /files?path={path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + tail,
            read_timeout=5,
        )
        if r:
            # The server's framing error, as Go's: 400 before the handler.
            assert status_of(r) in (400, 500), r[:200]
        # A new file whose body broke off is removed again (once the handler unwinds).
        deadline = time.monotonic() + 10
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not path.exists(), tail
    # And no late handler left anything behind either.
    time.sleep(0.5)
    assert list(tmp_path.iterdir()) == []


def test_huge_headers(daemon: Daemon) -> None:
    before = rss(daemon)
    for size in (2 << 20, 64 << 20):
        big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
        r = raw_request(daemon, big)
        # Go's limit (1 MiB + 4 KiB): 431, or a reset if the rest was still arriving.
        assert r == b"" or status_of(r) == 431, r[:100]
    assert rss(daemon) - before < RSS_STEP
    fits = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 19) + b"\r\n\r\n"
    assert status_of(raw_request(daemon, fits)) == 204


def test_odd_methods(client: httpx.Client, tmp_path: Path) -> None:
    # Only paths inside this test's own directory, whatever the method.
    target = tmp_path / "keep"
    target.write_bytes(b"k")
    for method in ("PUT", "DELETE", "PATCH", "TRACE"):
        r = client.request(method, "/files", params={"path": str(target)})
        assert r.status_code == 405, (method, r.status_code, r.text)
    # A method llhttp does not know is a framing error (Go would route it: 405).
    r = client.request("BREW", "/files", params={"path": str(target)})
    assert (r.status_code, r.text) == (400, "Invalid HTTP request received.")
    assert target.read_bytes() == b"k"


def test_header_whitespace_is_trimmed(daemon: Daemon, tmp_path: Path) -> None:
    # httpx refuses to send such values; Go's net/http trims them.
    target = tmp_path / "w"
    target.write_bytes(b"0123456789")
    r = raw_request(
        daemon,
        f"GET /files?path={target} HTTP/1.1\r\nHost: x\r\nRange: bytes=2-4 \t\r\n"
        "Accept-Encoding: identity\r\nConnection: close\r\n\r\n".encode(),
        half_close=False,
    )
    assert status_of(r) == 206, r[:200]
    assert r.endswith(b"\r\n\r\n234")
    r = raw_request(
        daemon,
        f"POST /files?path={tmp_path}/u HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/octet-stream \t\r\nContent-Length: 2\r\n"
        "Connection: close\r\n\r\nup".encode(),
        half_close=False,
    )
    assert status_of(r) == 200, r[:300]
    assert (tmp_path / "u").read_bytes() == b"up"


def test_pathless_write_url_writes_any_path(secured: Daemon, tmp_path: Path) -> None:
    # What docs/security.md says: the signature covers path "" and the
    # multipart filename picks the destination, anywhere.
    sig = signing.signature("", signing.WRITE, "root", TOKEN)
    params = {"username": "root", "signature": sig}
    for name in ("a/one", "b/two"):
        r = httpx.post(
            secured.url + "/files",
            params=params,
            files={"file": (str(tmp_path / name), b"w")},
            timeout=30,
        )
        assert r.status_code == 200, r.text
    assert (tmp_path / "a/one").read_bytes() == (tmp_path / "b/two").read_bytes() == b"w"
    # The same URL cannot read.
    r = httpx.get(secured.url + "/files", params=params, timeout=30)
    assert_json(r, 401, "invalid signature")


def test_token_header_with_optional_whitespace(secured: Daemon) -> None:
    # Go's net/http trims it: upstream accepts `X-Access-Token: <token> `.
    for value in (f"{TOKEN} ", f" {TOKEN}\t", f"\t{TOKEN}"):
        r = raw_request(
            secured,
            f"GET /envs HTTP/1.1\r\nHost: x\r\nX-Access-Token: {value}\r\n"
            "Connection: close\r\n\r\n".encode(),
            half_close=False,
        )
        assert status_of(r) == 200, (value, r[:200])
    r = raw_request(
        secured,
        f"GET /envs HTTP/1.1\r\nHost: x\r\nX-Access-Token: {TOKEN}x \r\n"
        "Connection: close\r\n\r\n".encode(),
        half_close=False,
    )
    assert status_of(r) == 401
    assert json_body_of(r)["code"] == 401


def test_bodies_cut_short(daemon: Daemon, tmp_path: Path) -> None:
    # The client goes away mid-body: an answer nobody reads, nothing left
    # behind, and no ClientDisconnect traceback (checked by the fixture).
    requests = [
        "POST /files/compose HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{",
        f"POST /files?path={tmp_path}/cut HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        "Content-Type: application/octet-stream\r\n\r\nabc",
        f"POST /files HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        "Content-Type: multipart/form-data; boundary=B\r\n\r\n--B\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{tmp_path}/cut2"\r\n\r\nab',
        "POST /init HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{",
        "POST /files/compose HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{",
    ]
    for request in requests:
        raw_request(daemon, request.encode(), read_timeout=5)
    deadline = time.monotonic() + 10
    while os.listdir(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(tmp_path) == []
    time.sleep(0.5)  # let the daemon log whatever it would log
