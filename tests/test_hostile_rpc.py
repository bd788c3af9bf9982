"""Hostile and malformed Connect requests against a real daemon.

Every class of bad input gets a Connect error (right code, JSON body with only
`code` and `message`, no Python exception text), the daemon stays healthy
(a command still runs), its memory stays bounded, and its log stays free of
tracebacks. A subset runs again with both cores busy.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from e2b import Sandbox
from e2b.exceptions import SandboxException, SandboxUnreachableException

from tests.connect_raw import envelope, parse_envelopes
from tests.daemon import Daemon

FS = "/filesystem.Filesystem/"
PROC = "/process.Process/"
UNARY_JSON = {"content-type": "application/json"}
STREAM_JSON = {"content-type": "application/connect+json"}
# Connect codes and the HTTP status of their unary error responses.
STATUS = {
    "invalid_argument": 400,
    "failed_precondition": 400,
    "resource_exhausted": 429,
    "unimplemented": 501,
}
# Exception texts that must never reach a client.
PYTHON_TEXT = (
    "Traceback",
    "Error:",
    "codec can't",
    "object is not",
    "NoneType",
    "Exceeds the limit",
)
# The daemon's RSS may grow this much over the whole module (it starts near 50 MiB).
RSS_GROWTH_LIMIT_KIB = 160 * 1024


# --- the daemon -----------------------------------------------------------


@pytest.fixture(scope="module")
def tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="envd-hostile-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """A daemon of our own: its log and memory are this module's alone."""
    d = Daemon().start()
    d.baseline_rss = rss_kib(d.pid)  # type: ignore[attr-defined]
    yield d
    d.stop()


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.url, timeout=60) as c:
        yield c


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def post(daemon: Daemon, path: str, body: bytes, headers: dict[str, Any]) -> httpx.Response:
    # A fresh connection per hostile request: one that the server closes must
    # not fail the next case.
    with httpx.Client(base_url=daemon.url, timeout=60) as c:
        return c.post(path, content=body, headers=headers)


def assert_clean_message(message: object) -> None:
    assert isinstance(message, str)
    assert message
    for text in PYTHON_TEXT:
        assert text not in message, message


def assert_unary_error(r: httpx.Response, code: str) -> dict[str, Any]:
    assert r.status_code == STATUS[code], (r.status_code, r.content)
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code, body
    assert_clean_message(body["message"])
    return body


def assert_stream_error(r: httpx.Response, code: str) -> dict[str, Any]:
    """A stream answered with HTTP 200 and nothing but an end-stream error."""
    assert r.status_code == 200, (r.status_code, r.content)
    assert r.headers["content-type"].startswith("application/connect+")
    frames = parse_envelopes(r.content)
    flags, payload = frames[-1]
    assert flags & 2, frames
    end = json.loads(payload)
    assert set(end) == {"error"}, end
    assert set(end["error"]) == {"code", "message"}, end
    assert end["error"]["code"] == code, end
    assert_clean_message(end["error"]["message"])
    return dict(end["error"])


def stream_events(r: httpx.Response) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    assert r.status_code == 200, r.content
    frames = parse_envelopes(r.content)
    assert frames[-1][0] & 2
    return [json.loads(p) for _, p in frames[:-1]], json.loads(frames[-1][1])


def run_echo(daemon: Daemon, word: str = "still-alive") -> str:
    body = {"process": {"cmd": "/bin/echo", "args": [word]}}
    r = post(daemon, PROC + "Start", envelope(json.dumps(body).encode()), STREAM_JSON)
    events, end = stream_events(r)
    assert end == {}, end
    return "".join(
        base64.b64decode(e["event"]["data"]["stdout"]).decode()
        for e in events
        if "data" in e["event"] and "stdout" in e["event"]["data"]
    )


def start_body(**process: Any) -> bytes:
    return envelope(json.dumps({"process": {"cmd": "/bin/true", **process}}).encode())


# --- NUL bytes --------------------------------------------------------------


def nul_unary_cases(tmp: Path) -> list[tuple[str, dict[str, Any]]]:
    bad = str(tmp / "a\0b")
    ok = str(tmp / "x")
    return [
        ("Stat", {"path": bad}),
        ("ListDir", {"path": bad}),
        ("MakeDir", {"path": bad}),
        ("Move", {"source": bad, "destination": ok}),
        ("Move", {"source": ok, "destination": bad}),
        # Inside our own temp dir; rejected before anything is touched.
        ("Remove", {"path": bad}),
        ("CreateWatcher", {"path": bad}),
    ]


def test_nul_in_filesystem_paths(daemon: Daemon, tmp: Path) -> None:
    (tmp / "x").write_text("x")
    for method, body in nul_unary_cases(tmp):
        r = post(daemon, FS + method, json.dumps(body).encode(), UNARY_JSON)
        error = assert_unary_error(r, "invalid_argument")
        assert "NUL" in error["message"], (method, error)
    r = post(
        daemon, FS + "WatchDir", envelope(json.dumps({"path": f"{tmp}/a\0"}).encode()), STREAM_JSON
    )
    assert_stream_error(r, "invalid_argument")
    assert (tmp / "x").read_text() == "x"  # nothing was moved or removed


@pytest.mark.parametrize(
    "process",
    [
        {"cmd": "/bin/ec\0ho"},
        {"cmd": "/bin/echo", "args": ["a\0b"]},
        {"cmd": "/bin/echo", "envs": {"A": "a\0"}},
        {"cmd": "/bin/echo", "envs": {"A\0": "a"}},
        {"cmd": "/bin/echo", "cwd": "/tm\0p"},
    ],
    ids=["cmd", "arg", "env-value", "env-key", "cwd"],
)
def test_nul_in_start(daemon: Daemon, process: dict[str, Any]) -> None:
    body = envelope(json.dumps({"process": process}).encode())
    assert_stream_error(post(daemon, PROC + "Start", body, STREAM_JSON), "invalid_argument")


def test_start_with_empty_env_key_runs_without_it(daemon: Daemon) -> None:
    # Upstream passes `=value` to execve and its shell drops it: the command runs.
    body = envelope(
        json.dumps(
            {"process": {"cmd": "/usr/bin/env", "envs": {"": "hostile-empty", "B": "b"}}}
        ).encode()
    )
    events, end = stream_events(post(daemon, PROC + "Start", body, STREAM_JSON))
    assert end == {}
    out = "".join(
        base64.b64decode(e["event"]["data"].get("stdout", "")).decode()
        for e in events
        if "data" in e["event"]
    )
    assert "B=b" in out.splitlines()
    assert "hostile-empty" not in out
    assert events[-1]["event"]["end"]["exited"] is True


# --- headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["9" * 5000, "-" + "9" * 5000, b"\xff\xfe", "1e9", "5s", "99999999999999999999"],
    ids=["5000-digits", "negative-5000", "non-utf8", "float", "suffix", "int64-overflow"],
)
def test_keepalive_header_garbage_means_default(daemon: Daemon, tmp: Path, value: Any) -> None:
    headers = {**STREAM_JSON, "keepalive-ping-interval": value}
    events, end = stream_events(post(daemon, PROC + "Start", start_body(), headers))
    assert end == {}
    assert "end" in events[-1]["event"]
    # WatchDir reads the same header; the stream starts and ends at its deadline.
    headers["connect-timeout-ms"] = "300"
    r = post(daemon, FS + "WatchDir", envelope(json.dumps({"path": str(tmp)}).encode()), headers)
    events, end = stream_events(r)
    assert events[0] == {"start": {}}
    assert end["error"]["code"] == "deadline_exceeded"


@pytest.mark.parametrize("value", [b"\xff", b"12\xe9", "abc", "12345678901"])
def test_bad_connect_timeout(daemon: Daemon, value: Any) -> None:
    r = post(daemon, PROC + "List", b"{}", {**UNARY_JSON, "connect-timeout-ms": value})
    assert_unary_error(r, "invalid_argument")
    headers = {**STREAM_JSON, "connect-timeout-ms": value}
    assert_stream_error(post(daemon, PROC + "Start", start_body(), headers), "invalid_argument")


def test_non_utf8_in_other_headers_is_harmless(daemon: Daemon) -> None:
    r = post(daemon, PROC + "List", b"{}", {**UNARY_JSON, "x-junk": b"\xff\xfe\x80"})
    assert r.status_code == 200
    assert "processes" in r.json() or r.json() == {}


def test_bad_protocol_version(daemon: Daemon) -> None:
    r = post(daemon, PROC + "List", b"{}", {**UNARY_JSON, "connect-protocol-version": "2"})
    assert_unary_error(r, "invalid_argument")
    headers = {**STREAM_JSON, "connect-protocol-version": "2"}
    assert_stream_error(post(daemon, PROC + "Start", start_body(), headers), "invalid_argument")


def test_huge_request_head_is_431(daemon: Daemon) -> None:
    # Go's net/http refuses heads over 1 MiB; we must not buffer them either.
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as s:
        s.sendall(b"POST /process.Process/List HTTP/1.1\r\nHost: x\r\nX-Big: ")
        answer = b""
        try:
            for _ in range(64):
                s.sendall(b"a" * (256 << 10))
        except OSError:
            pass  # closed on us after the 431
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except OSError:
            pass
    # The reset may swallow the answer; the daemon's health below is what matters.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    headers = {**UNARY_JSON, "x-fine": "a" * (900 << 10)}
    assert post(daemon, PROC + "List", b"{}", headers).status_code == 200


# --- content types and methods ---------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["application/grpc", "application/grpc+proto", "application/grpc+json"]
)
def test_grpc_is_unimplemented_trailers_only(daemon: Daemon, content_type: str) -> None:
    r = post(daemon, PROC + "List", envelope(b""), {"content-type": content_type})
    assert r.status_code == 200
    assert r.headers["content-type"] == content_type
    assert r.headers["grpc-status"] == "12"  # UNIMPLEMENTED
    assert "gRPC-Web" in r.headers["grpc-message"]
    assert r.content == b""


def test_grpc_web_works(daemon: Daemon) -> None:
    r = post(daemon, PROC + "List", envelope(b"{}"), {"content-type": "application/grpc-web+json"})
    frames = parse_envelopes(r.content)
    assert frames[0] == (0, b"{}")
    assert frames[-1][0] == 0x80
    assert b"grpc-status: 0" in frames[-1][1]


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/xml", "multipart/form-data"]
)
def test_unsupported_media_type(daemon: Daemon, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    r = post(daemon, PROC + "List", b"{}", headers)
    # connect-go: 415 with the accepted types, no body.
    assert r.status_code == 415
    assert "application/json" in r.headers["accept-post"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_odd_methods(daemon: Daemon, method: str) -> None:
    with httpx.Client(base_url=daemon.url, timeout=30) as c:
        r = c.request(method, PROC + "List", content=b"{}", headers=UNARY_JSON)
    # OPTIONS without CORS preflight headers is still not a Connect call.
    assert r.status_code == 405, (method, r.status_code)
    assert r.headers["allow"] == "POST"


def test_unknown_method_is_404(daemon: Daemon) -> None:
    assert post(daemon, PROC + "Nope", b"{}", UNARY_JSON).status_code == 404


# --- bodies: JSON -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'"x"', b"  ", b"\n\t", b"null", b"1", b"true", b"{", b"{}x", b"{} {}"],
    ids=[
        "empty",
        "array",
        "string",
        "spaces",
        "whitespace",
        "null",
        "number",
        "bool",
        "open",
        "trailing",
        "two",
    ],
)
def test_non_object_json_unary(daemon: Daemon, body: bytes) -> None:
    # ListDir would list the home directory if this were taken as `{}`.
    r = post(daemon, FS + "ListDir", body, UNARY_JSON)
    assert_unary_error(r, "invalid_argument")


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"  ", b"null", b"7"])
def test_non_object_json_stream(daemon: Daemon, body: bytes) -> None:
    # Start would run the command "" if this were taken as `{}`.
    assert_stream_error(
        post(daemon, PROC + "Start", envelope(body), STREAM_JSON), "invalid_argument"
    )


def test_empty_envelope_is_the_empty_message(daemon: Daemon) -> None:
    # connect-go: a zero-length envelope is the zero message (here: no selector).
    error = assert_stream_error(
        post(daemon, PROC + "Connect", envelope(b""), STREAM_JSON), "unimplemented"
    )
    assert error["message"] == "invalid input type *process.ProcessSelector"


def test_empty_unary_proto_is_the_empty_message(daemon: Daemon) -> None:
    r = post(daemon, PROC + "List", b"", {"content-type": "application/proto"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "body",
    [b'{"path":"\xff"}', b'{"path":"a\xc3"}', b"\xef\xbb\xbf{}", b'{"\xfe":1}'],
    ids=["invalid-byte", "cut-sequence", "bom", "key"],
)
def test_non_utf8_json(daemon: Daemon, body: bytes) -> None:
    assert_unary_error(post(daemon, FS + "Stat", body, UNARY_JSON), "invalid_argument")
    assert_stream_error(
        post(daemon, FS + "WatchDir", envelope(body), STREAM_JSON), "invalid_argument"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"path":' + b"[" * 100_000,
        b'{"a":' * 50_000,
        b'{"process":{"envs":' + b'{"a":' * 20_000,
    ],
    ids=["arrays", "in-field", "objects", "in-map"],
)
def test_deep_json(daemon: Daemon, body: bytes) -> None:
    assert_unary_error(post(daemon, FS + "Stat", body, UNARY_JSON), "invalid_argument")
    assert_stream_error(
        post(daemon, PROC + "Start", envelope(body), STREAM_JSON), "invalid_argument"
    )


def test_wrong_field_types(daemon: Daemon) -> None:
    for body in (
        b'{"path":1}',
        b'{"path":{}}',
        b'{"depth":"x"}',
        b'{"depth":-1}',
        b'{"depth":1e99}',
    ):
        assert_unary_error(post(daemon, FS + "ListDir", body, UNARY_JSON), "invalid_argument")


# --- bodies: protobuf ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\x0a" + b"\xff" * 10],
    ids=["garbage", "truncated", "invalid-utf8-string", "bad-varint"],
)
def test_broken_protobuf(daemon: Daemon, body: bytes) -> None:
    r = post(daemon, FS + "Stat", body, {"content-type": "application/proto"})
    assert_unary_error(r, "invalid_argument")


# --- compression, sizes -------------------------------------------------------------


def test_invalid_gzip(daemon: Daemon) -> None:
    gz = {**UNARY_JSON, "content-encoding": "gzip"}
    assert_unary_error(post(daemon, PROC + "List", b"not gzip", gz), "invalid_argument")
    truncated = gzip.compress(b"{}" * 1000)[:-12]
    assert_unary_error(post(daemon, PROC + "List", truncated, gz), "invalid_argument")
    corrupt = bytearray(gzip.compress(b'{"path":"/tmp"}'))
    corrupt[12:16] = b"\xff\xff\xff\xff"
    assert_unary_error(post(daemon, FS + "Stat", bytes(corrupt), gz), "invalid_argument")
    sgz = {**STREAM_JSON, "connect-content-encoding": "gzip"}
    for payload in (b"not gzip", truncated, bytes(corrupt)):
        r = post(daemon, PROC + "Start", envelope(payload, flags=1), sgz)
        assert_stream_error(r, "invalid_argument")


def test_unknown_compression(daemon: Daemon) -> None:
    r = post(daemon, PROC + "List", b"{}", {**UNARY_JSON, "content-encoding": "br"})
    assert_unary_error(r, "unimplemented")
    headers = {**STREAM_JSON, "connect-content-encoding": "br"}
    assert_stream_error(
        post(daemon, PROC + "Start", envelope(b"x", flags=1), headers), "unimplemented"
    )


def test_gzip_bombs(daemon: Daemon) -> None:
    bomb = gzip.compress(b" " * (200 << 20), compresslevel=9)  # 200 MiB in ~200 KiB
    assert len(bomb) < 1 << 20
    gz = {**UNARY_JSON, "content-encoding": "gzip"}
    assert_unary_error(post(daemon, PROC + "List", bomb, gz), "resource_exhausted")
    sgz = {**STREAM_JSON, "connect-content-encoding": "gzip"}
    assert_stream_error(
        post(daemon, PROC + "Start", envelope(bomb, flags=1), sgz), "resource_exhausted"
    )
    assert rss_kib(daemon.pid) - daemon.baseline_rss < RSS_GROWTH_LIMIT_KIB  # type: ignore[attr-defined]


def test_oversized_messages(daemon: Daemon) -> None:
    big = b'{"path":"' + b"a" * (5 << 20) + b'"}'
    assert_unary_error(post(daemon, FS + "Stat", big, UNARY_JSON), "resource_exhausted")
    assert_stream_error(
        post(daemon, FS + "WatchDir", envelope(big), STREAM_JSON), "resource_exhausted"
    )
    # A frame header announcing 2 GiB: refused from the header, nothing buffered.
    announced = struct.pack(">BI", 0, 2 << 30) + b"{}"
    assert_stream_error(post(daemon, PROC + "Start", announced, STREAM_JSON), "resource_exhausted")


# --- fuzz: random bytes and mutations (read-only methods only) -------------------------


SAFE_UNARY = [FS + "Stat", FS + "GetWatcherEvents", FS + "RemoveWatcher", PROC + "List"]
CONNECT_CODES = {
    "invalid_argument",
    "not_found",
    "permission_denied",
    "failed_precondition",
    "resource_exhausted",
    "unimplemented",
    "internal",
}


def test_random_bodies(daemon: Daemon) -> None:
    rng = random.Random(8)
    seed_bodies = [
        b'{"path":"/tmp"}',
        b'{"watcherId":"w1"}',
        b"{}",
        b'{"path":"/","x":[1,{"y":null}]}',
    ]
    for i in range(300):
        path = SAFE_UNARY[i % len(SAFE_UNARY)]
        if i % 3 == 0:
            body = rng.randbytes(rng.randrange(0, 64))
        else:
            mutated = bytearray(rng.choice(seed_bodies))
            for _ in range(rng.randrange(1, 4)):
                pos = rng.randrange(0, len(mutated) + 1)
                mutated[pos : pos + rng.randrange(0, 3)] = rng.randbytes(rng.randrange(0, 3))
            body = bytes(mutated)
        content_type = rng.choice(["application/json", "application/proto"])
        r = post(daemon, path, body, {"content-type": content_type})
        if r.status_code == 200:
            continue
        assert r.status_code < 500 or r.json()["code"] == "internal", (path, body, r.content)
        error = r.json()
        assert set(error) == {"code", "message"}, (body, error)
        assert error["code"] in CONNECT_CODES, (body, error)
        assert_clean_message(error["message"])


# --- process input and spawn errors ------------------------------------------------------


def start_sleeping(daemon: Daemon, **extra: Any) -> int:
    body = {"process": {"cmd": "/bin/sleep", "args": ["30"]}, **extra}
    with httpx.stream(
        "POST",
        daemon.url + PROC + "Start",
        content=envelope(json.dumps(body).encode()),
        headers=STREAM_JSON,
        timeout=30,
    ) as r:
        buf = b""
        for chunk in r.iter_raw():
            buf += chunk
            if len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[1:5], "big"):
                break
    first = json.loads(parse_envelopes(buf[: 5 + int.from_bytes(buf[1:5], "big")])[0][1])
    return int(first["event"]["start"]["pid"])


def test_stdin_unavailable_is_failed_precondition(daemon: Daemon) -> None:
    no_stdin = start_sleeping(daemon, stdin=False)
    closed = start_sleeping(daemon)
    try:
        r = post(
            daemon,
            PROC + "CloseStdin",
            json.dumps({"process": {"pid": closed}}).encode(),
            UNARY_JSON,
        )
        assert r.status_code == 200
        for pid in (no_stdin, closed):
            body = {"process": {"pid": pid}, "input": {"stdin": "YQ=="}}
            r = post(daemon, PROC + "SendInput", json.dumps(body).encode(), UNARY_JSON)
            assert_unary_error(r, "failed_precondition")
            frames = envelope(json.dumps({"start": {"process": {"pid": pid}}}).encode())
            frames += envelope(json.dumps({"data": {"input": {"stdin": "YQ=="}}}).encode())
            r = post(daemon, PROC + "StreamInput", frames, STREAM_JSON)
            assert_stream_error(r, "failed_precondition")
    finally:
        for pid in (no_stdin, closed):
            os.kill(pid, signal.SIGKILL)


def _pids_cgroup() -> Path | None:
    """A writable pids controller (v2 with `pids` enabled, or v1), or None."""
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/pids")):
        if (root / "cgroup.procs").exists() and os.access(root, os.W_OK):
            controllers = root / "cgroup.controllers"
            if controllers.exists() and "pids" not in controllers.read_text().split():
                continue
            if (
                not controllers.exists()
                and not (root / "pids.max").exists()
                and root.name != "pids"
            ):
                continue
            return root
    return None


def test_spawn_without_pids_is_resource_exhausted(tmp: Path) -> None:
    root = _pids_cgroup()
    if root is None:
        pytest.skip("no writable pids cgroup controller")
    group = root / f"envd-hostile-{os.getpid()}"
    with Daemon() as d:
        try:
            group.mkdir()
        except OSError as e:
            pytest.skip(f"cannot create a pids cgroup: {e}")
        try:
            if (root / "cgroup.subtree_control").exists() and not (group / "pids.max").exists():
                pytest.skip("pids controller not enabled for children")
            try:
                # The daemon with all its threads, and its fork server, whose clones
                # are the children.
                for member in [d.pid, *(c.pid for c in psutil.Process(d.pid).children())]:
                    (group / "cgroup.procs").write_text(str(member))
            except OSError as e:
                pytest.skip(f"cannot move the daemon into a pids cgroup: {e}")
            current = int((group / "pids.current").read_text())
            (group / "pids.max").write_text(str(current))
            r = post(d, PROC + "Start", start_body(), STREAM_JSON)
            error = assert_stream_error(r, "resource_exhausted")
            assert "resource temporarily unavailable" in error["message"], error
            (group / "pids.max").write_text("max")
            assert run_echo(d) == "still-alive\n"
        finally:
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (root / "cgroup.procs").write_text(pid)
            group.rmdir()
        assert "Traceback" not in d.output()


# --- with the CPU busy --------------------------------------------------------------------


@pytest.fixture
def busy_cpu() -> Iterator[None]:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def test_hostile_inputs_with_cpu_busy(daemon: Daemon, tmp: Path, busy_cpu: None) -> None:
    for _ in range(3):
        assert_unary_error(post(daemon, FS + "ListDir", b"[]", UNARY_JSON), "invalid_argument")
        assert_unary_error(
            post(daemon, FS + "Stat", b'{"path":"\xff"}', UNARY_JSON), "invalid_argument"
        )
        r = post(daemon, FS + "Stat", json.dumps({"path": f"{tmp}/\0"}).encode(), UNARY_JSON)
        assert_unary_error(r, "invalid_argument")
        gz = {**UNARY_JSON, "content-encoding": "gzip"}
        assert_unary_error(post(daemon, PROC + "List", b"junk", gz), "invalid_argument")
        bomb = gzip.compress(b"\0" * (64 << 20))
        assert_unary_error(post(daemon, PROC + "List", bomb, gz), "resource_exhausted")
        assert_stream_error(
            post(daemon, PROC + "Start", envelope(b"[" * 100_000), STREAM_JSON), "invalid_argument"
        )
        headers = {**STREAM_JSON, "keepalive-ping-interval": "9" * 5000}
        _events, end = stream_events(post(daemon, PROC + "Start", start_body(), headers))
        assert end == {}
        assert run_echo(daemon, "busy") == "busy\n"


# --- health, memory, log ----------------------------------------------------------------


def test_daemon_healthy_after_everything(daemon: Daemon) -> None:
    """Last in the file, so it runs after every case above on the same daemon."""
    assert run_echo(daemon) == "still-alive\n"
    assert httpx.get(daemon.url + "/health").status_code == 204
    growth = rss_kib(daemon.pid) - daemon.baseline_rss  # type: ignore[attr-defined]
    assert growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew {growth} KiB"
    log = daemon.output()
    assert "Traceback" not in log, log[-5000:]
    assert "Exception in ASGI application" not in log


# --- shutdown (own daemons) -------------------------------------------------------------


def _open_stream(url: str, body: dict[str, Any]) -> tuple[httpx.Client, httpx.Response]:
    c = httpx.Client(timeout=30)
    request = c.build_request(
        "POST", url, content=envelope(json.dumps(body).encode()), headers=STREAM_JSON
    )
    return c, c.send(request, stream=True)


def _read_frames(r: httpx.Response) -> list[tuple[int, bytes]]:
    # iter_raw raises on a chunked body cut short: a clean end is part of the contract.
    return parse_envelopes(b"".join(r.iter_raw()))


def test_sigterm_ends_open_streams_with_unavailable(tmp: Path) -> None:
    d = Daemon().start()
    unavailable = {"error": {"code": "unavailable", "message": "envd is shutting down"}}
    pids: list[int] = []
    opened = []
    try:
        start = {"process": {"cmd": "/bin/sleep", "args": ["30"]}, "tag": "hostile-shutdown"}
        opened.append(_open_stream(d.url + PROC + "Start", start))
        first = opened[0][1]
        head = b""
        raw = first.iter_raw()
        while len(head) < 5 or len(head) < 5 + int.from_bytes(head[1:5], "big"):
            head += next(raw)
        size = 5 + int.from_bytes(head[1:5], "big")
        pids.append(json.loads(head[5:size])["event"]["start"]["pid"])
        opened.append(
            _open_stream(d.url + PROC + "Connect", {"process": {"tag": "hostile-shutdown"}})
        )
        opened.append(_open_stream(d.url + FS + "WatchDir", {"path": str(tmp)}))
        for _, r in opened:
            assert r.status_code == 200
        # A client stream too: its request body stays open until we let it end.
        release = threading.Event()
        answer: list[bytes] = []

        def input_body() -> Iterator[bytes]:
            yield envelope(json.dumps({"start": {"process": {"pid": pids[0]}}}).encode())
            release.wait(20)

        def stream_input() -> None:
            r = httpx.post(
                d.url + PROC + "StreamInput", content=input_body(), headers=STREAM_JSON, timeout=30
            )
            answer.append(r.content)

        sender = threading.Thread(target=stream_input)
        sender.start()
        time.sleep(0.5)
        d.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        rest = head[size:] + b"".join(raw)
        ends = [parse_envelopes(rest)] + [_read_frames(r) for _, r in opened[1:]]
        for frames in ends:
            flags, payload = frames[-1]
            assert flags == 2
            assert json.loads(payload) == unavailable
        assert d.proc.wait(10) is not None  # type: ignore[union-attr]
        release.set()
        sender.join(30)
        assert parse_envelopes(answer[0]) == [(2, json.dumps(unavailable).encode())]
        assert "Traceback" not in d.output()
        # Children outlive the daemon, as upstream's do.
        os.kill(pids[0], 0)
    finally:
        for c, r in opened:
            r.close()
            c.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        d.stop()


def test_sigterm_with_sdk_streams(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = Daemon().start()
    monkeypatch.setenv("E2B_DEBUG", "true")
    monkeypatch.setenv("E2B_SANDBOX_URL", d.url)
    pid = None
    try:
        sandbox = Sandbox.create()
        handle = sandbox.commands.run("sleep 30", background=True)
        pid = handle.pid
        d.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        with pytest.raises(SandboxException) as raised:
            handle.wait()
        # The SDK maps `unavailable` to its sandbox-unreachable (a TimeoutException).
        assert type(raised.value) is SandboxUnreachableException
        assert "envd is shutting down" in str(raised.value)
        assert d.proc.wait(10) is not None  # type: ignore[union-attr]
        assert "Traceback" not in d.output()
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        d.stop()


# --- listening: both address families ----------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_listens_on_ipv6_and_ipv4() -> None:
    with Daemon() as d:
        for host in ("[::1]", "127.0.0.1"):
            r = httpx.post(f"http://{host}:{d.port}{PROC}List", content=b"{}", headers=UNARY_JSON)
            assert r.status_code == 200, host


# Stands in for a kernel booted with ipv6.disable=1, which we cannot boot here:
# creating an AF_INET6 socket fails as it does there.
NO_IPV6_SITE = """
import errno, socket
_real = socket.socket
class _NoIPv6(_real):
    def __init__(self, family=-1, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        super().__init__(family, *args, **kwargs)
socket.socket = _NoIPv6
"""


def test_falls_back_to_ipv4_without_ipv6(tmp: Path) -> None:
    site = tmp / "no-ipv6"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(NO_IPV6_SITE)
    with Daemon(env={"PYTHONPATH": f"{site}:{os.getcwd()}"}) as d:
        assert run_echo(d) == "still-alive\n"
        log = d.output()
        assert "listening on IPv4 only" in log
        assert "Traceback" not in log


def test_ipv6_disabled_by_sysctl_in_a_netns(tmp: Path) -> None:
    """disable_ipv6=1 keeps AF_INET6 sockets: the dual-stack listener still serves IPv4."""
    if os.geteuid() != 0 or not Path("/usr/bin/unshare").exists():
        pytest.skip("needs root and unshare")
    script = tmp / "netns_check.py"
    script.write_text(
        "import sys, httpx\n"
        f"sys.path.insert(0, {os.getcwd()!r})\n"
        "from tests.daemon import Daemon\n"
        "with Daemon() as d:\n"
        "    r = httpx.post(d.url + '/process.Process/List', content=b'{}',"
        " headers={'content-type': 'application/json'})\n"
        "    print(r.status_code, 'Traceback' in d.output())\n"
    )
    shell = (
        "ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
        "&& sysctl -qw net.ipv6.conf.lo.disable_ipv6=1 "
        f"&& exec {sys.executable} {script}"
    )
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", shell],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"cannot create a network namespace: {done.stderr.strip()}")
    assert done.stdout.split() == ["200", "False"], (done.stdout, done.stderr)
