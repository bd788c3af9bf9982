"""The request pipeline: CORS, the X-Access-Token gate, Basic auth; the authorization matrix."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import AuthenticationException

from tests.control import GATE_401, ControlDaemon, sdk_sandbox

TOKEN = "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def open_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlDaemon]:
    """No token configured."""
    with ControlDaemon(tmp_path_factory.mktemp("open")) as d:
        yield d


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlDaemon]:
    """Token installed by /init, as the orchestrator does for a secure sandbox."""
    with ControlDaemon(tmp_path_factory.mktemp("secured")) as d:
        r = d.init({"accessToken": TOKEN, "envVars": {"KEEP": "1"}})
        assert r.status_code == 204
        yield d


def connect_envelope(message: dict[str, object]) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(payload)) + payload


# method, path, headers, body builder (marker path → body), exempt from the gate
Route = tuple[str, str, dict[str, str], bytes | None, bool]
ROUTES: dict[str, Route] = {
    "health": ("GET", "/health", {}, None, True),
    "health-head": ("HEAD", "/health", {}, None, False),
    "health-slash": ("GET", "/health/", {}, None, False),
    "envs": ("GET", "/envs", {}, None, False),
    "metrics": ("GET", "/metrics", {}, None, False),
    "files-get": ("GET", "/files?path=/etc/hostname", {}, None, True),
    "files-post": ("POST", "/files?path=/tmp/x", {"Content-Type": "text/plain"}, b"", True),
    "files-compose": ("POST", "/files/compose", {"Content-Type": "application/json"}, b"{}", False),
    "unknown": ("GET", "/nope", {}, None, False),
    "process-list": (
        "POST",
        "/process.Process/List",
        {"Content-Type": "application/json"},
        b"{}",
        False,
    ),
    "fs-stat": (
        "POST",
        "/filesystem.Filesystem/Stat",
        {"Content-Type": "application/json"},
        b'{"path":"/"}',
        False,
    ),
    "process-start": ("POST", "/process.Process/Start", {}, None, False),
}
HEADERS = {"no-header": None, "wrong": "wrong-" + TOKEN, "right": TOKEN}
# What /files answers a secured daemon without a signature (tests/test_files_auth.py has more).
_FILES_GATE_MESSAGES = {
    "no-header": "missing signature query parameter",
    "wrong": "access token present in header but does not match",
}
FILES_GATE = {"files-get": _FILES_GATE_MESSAGES, "files-post": _FILES_GATE_MESSAGES}


def send(daemon: ControlDaemon, route: str, token: str | None, marker: Path) -> httpx.Response:
    method, path, headers, body, _ = ROUTES[route]
    headers = dict(headers)
    if route == "process-start":
        headers["Content-Type"] = "application/connect+json"
        body = connect_envelope({"process": {"cmd": "/bin/sh", "args": ["-c", f"touch {marker}"]}})
    if token is not None:
        headers["X-Access-Token"] = token
    return httpx.request(method, daemon.url + path, headers=headers, content=body, timeout=10)


@pytest.mark.parametrize("header", list(HEADERS))
@pytest.mark.parametrize("route", list(ROUTES))
def test_matrix(
    open_daemon: ControlDaemon,
    secured: ControlDaemon,
    route: str,
    header: str,
    tmp_path: Path,
) -> None:
    token = HEADERS[header]
    exempt = ROUTES[route][4]
    # Without a configured token every header is ignored: the answer is the route's own,
    # the same as with no header at all.
    reference = send(open_daemon, route, None, tmp_path / "reference")
    assert reference.status_code != 401
    r = send(open_daemon, route, token, tmp_path / "open")
    assert (r.status_code, r.headers.get("content-type")) == (
        reference.status_code,
        reference.headers.get("content-type"),
    )

    marker = tmp_path / "secured"
    r = send(secured, route, token, marker)
    if route in FILES_GATE and header != "right":
        # Exempt from the middleware, but /files has its own header-or-signature gate.
        assert r.status_code == 401
        assert r.json() == {"code": 401, "message": FILES_GATE[route][header]}
    elif exempt or header == "right":
        assert r.status_code == reference.status_code
        assert r.content != GATE_401
    else:
        assert r.status_code == 401
        assert r.content == (b"" if route == "health-head" else GATE_401)
        assert r.headers["content-type"] == "application/json; charset=utf-8"
        assert r.headers["x-content-type-options"] == "nosniff"
        # Rejected before routing: nothing ran.
        assert not marker.exists()
    # And nothing the matrix did changed the secured daemon's configuration.
    assert secured.envs(TOKEN).json() == {"KEEP": "1", "E2B_SANDBOX": "false"}


def test_init_is_exempt_but_validates_its_body(secured: ControlDaemon) -> None:
    for header in (None, "wrong", TOKEN):
        headers = {"X-Access-Token": header} if header else {}
        r = secured.init({"accessToken": TOKEN}, **headers)
        assert r.status_code == 204
        r = secured.init({"accessToken": "other"}, **headers)
        assert (r.status_code, r.text) == (401, "access token validation failed")


def test_token_error_hides_basic_auth_error(secured: ControlDaemon) -> None:
    auth = ("no-such-user", "")
    r = httpx.get(secured.url + "/envs", auth=auth)
    assert (r.status_code, r.content) == (401, GATE_401)
    r = httpx.get(secured.url + "/envs", auth=auth, headers={"X-Access-Token": TOKEN})
    assert r.status_code == 401
    assert r.json() == {"code": "unauthenticated", "message": "invalid username: 'no-such-user'"}


def test_header_name_is_case_insensitive_and_value_exact(secured: ControlDaemon) -> None:
    assert httpx.get(secured.url + "/envs", headers={"x-ACCESS-token": TOKEN}).status_code == 200
    for value in (TOKEN.upper(), "x" + TOKEN, TOKEN[:-1], ""):
        r = httpx.get(secured.url + "/envs", headers={"X-Access-Token": value})
        assert r.status_code == 401, value


# --- CORS ---------------------------------------------------------------------------------

EXPOSED = (
    "Grpc-Status, Grpc-Message, Grpc-Status-Details-Bin, Location, Cache-Control, "
    "X-Content-Type-Options"
)


ALLOW_HEADERS = "content-type,x-access-token,connect-protocol-version"


def preflight(daemon: ControlDaemon, path: str, **headers: str) -> httpx.Response:
    return httpx.options(daemon.url + path, headers=headers)


def test_preflight_is_answered_before_the_gate(secured: ControlDaemon) -> None:
    r = preflight(
        secured,
        "/process.Process/Start",
        Origin="https://app.example",
        **{
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": ALLOW_HEADERS,
        },
    )
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-allow-methods"] == "POST"
    assert r.headers["access-control-allow-headers"] == ALLOW_HEADERS
    assert r.headers["access-control-max-age"] == "7200"
    assert r.headers["vary"] == (
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    )
    assert "access-control-allow-credentials" not in r.headers


@pytest.mark.parametrize(
    "headers",
    [
        {"Access-Control-Request-Method": "POST"},  # no Origin
        {"Origin": "https://x", "Access-Control-Request-Method": "TRACE"},
    ],
)
def test_preflight_without_origin_or_allowed_method(
    secured: ControlDaemon, headers: dict[str, str]
) -> None:
    r = preflight(secured, "/envs", **headers)
    assert r.status_code == 204
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-methods" not in r.headers
    assert r.headers["vary"].startswith("Origin")


def test_actual_request_headers_including_401(secured: ControlDaemon) -> None:
    r = httpx.get(secured.url + "/envs", headers={"Origin": "https://app.example"})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-expose-headers"] == EXPOSED
    assert r.headers["vary"] == "Origin"
    r = httpx.get(secured.url + "/health")
    assert r.headers["vary"] == "Origin"
    assert "access-control-allow-origin" not in r.headers


def test_plain_options_goes_through_gate_and_router(
    secured: ControlDaemon, open_daemon: ControlDaemon
) -> None:
    assert httpx.options(secured.url + "/envs").status_code == 401
    r = httpx.options(open_daemon.url + "/envs", headers={"Origin": "https://x"})
    assert r.status_code == 405
    assert r.headers["access-control-allow-origin"] == "*"


# --- the SDK with an access token ---------------------------------------------------------


def test_sdk_with_token_runs_commands_and_moves_files(secured: ControlDaemon) -> None:
    sandbox = sdk_sandbox(secured, TOKEN)
    assert sandbox.is_running()
    assert sandbox.commands.run("echo $KEEP").stdout == "1\n"
    path = str(secured.root / "sdk-secured.txt")
    sandbox.files.write(path, "secret data")
    assert sandbox.files.read(path) == "secret data"
    assert sandbox.files.exists(path)


@pytest.mark.parametrize("token", [None, "wrong"])
def test_sdk_without_right_token_gets_authentication_error(
    secured: ControlDaemon, token: str | None
) -> None:
    sandbox = sdk_sandbox(secured, token)
    assert sandbox.is_running()  # /health is exempt
    with pytest.raises(AuthenticationException):
        sandbox.commands.list()
