"""/files behind an access token: header or signed URL (signatures.md §2), end to end.

Each cell asserts the status, the exact JSON body, and that a refused upload
wrote nothing. URLs are signed by our own module and by the e2b SDK.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from envd.api.signing import signature
from tests.control import ControlDaemon, sdk_sandbox

TOKEN = "files-token-" + "f" * 20


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlDaemon]:
    with ControlDaemon(tmp_path_factory.mktemp("files-secured")) as d:
        assert d.init({"accessToken": TOKEN}).status_code == 204
        yield d


@pytest.fixture(scope="module")
def open_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlDaemon]:
    with ControlDaemon(tmp_path_factory.mktemp("files-open")) as d:
        yield d


Query = dict[str, str | int | None]


def url(daemon: ControlDaemon, path: str, query: Query) -> str:
    parts = [f"path={quote(path)}"]
    parts += [f"{k}={quote(str(v))}" for k, v in query.items() if v is not None]
    return f"{daemon.url}/files?{'&'.join(parts)}"


def signed(path: str, operation: str, expiration: int | None = None) -> Query:
    return {
        "username": "root",
        "signature": signature(path, operation, "root", TOKEN, expiration),
        "signature_expiration": expiration,
    }


FUTURE = int(time.time()) + 3600
PAST = int(time.time()) - 10

# case → (query builder(path, op), header, expected status, expected message or None)
CASES: dict[str, tuple[Callable[[str, str], Query], str | None, int, str | None]] = {
    "no-signature": (lambda p, op: {"username": "root"}, None, 401,
                     "missing signature query parameter"),
    "valid": (signed, None, 200, None),
    "valid-with-expiry": (lambda p, op: signed(p, op, FUTURE), None, 200, None),
    "wrong": (lambda p, op: {**signed(p, op), "signature": "v1_" + "A" * 43}, None, 401,
              "invalid signature"),
    "other-operation": (lambda p, op: signed(p, "read" if op == "write" else "write"), None, 401,
                        "invalid signature"),
    "expired": (lambda p, op: signed(p, op, PAST), None, 401, "signature is already expired"),
    "valid-but-wrong-header": (signed, "wrong", 401,
                               "access token present in header but does not match"),
    "right-header-no-signature": (lambda p, op: {}, TOKEN, 200, None),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_download_matrix(secured: ControlDaemon, case: str) -> None:
    path = secured.root / f"read-{case}.txt"
    path.write_text("content")
    build, header, status, message = CASES[case]
    headers = {"X-Access-Token": header} if header else {}
    r = httpx.get(url(secured, str(path), build(str(path), "read")), headers=headers)
    assert r.status_code == status, r.text
    if message is None:
        assert r.content == b"content"
    else:
        assert r.json() == {"code": 401, "message": message}


@pytest.mark.parametrize("case", list(CASES))
def test_upload_matrix(secured: ControlDaemon, case: str) -> None:
    path = secured.root / f"write-{case}.txt"
    build, header, status, message = CASES[case]
    headers = {"Content-Type": "application/octet-stream"}
    if header:
        headers["X-Access-Token"] = header
    r = httpx.post(
        url(secured, str(path), build(str(path), "write")), content=b"uploaded", headers=headers
    )
    assert r.status_code == status, r.text
    if message is None:
        assert path.read_bytes() == b"uploaded"
        assert r.json()[0]["path"] == str(path)
    else:
        assert r.json() == {"code": 401, "message": message}
        assert not path.exists()  # refused before anything was written


def test_without_a_token_signatures_are_ignored(open_daemon: ControlDaemon) -> None:
    path = open_daemon.root / "open.txt"
    query: Query = {"username": "root", "signature": "v1_garbage", "signature_expiration": PAST}
    r = httpx.post(url(open_daemon, str(path), query), content=b"x",
                   headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    assert r.status_code == 200
    assert httpx.get(url(open_daemon, str(path), query)).content == b"x"


def test_compose_is_behind_the_gate_not_signatures(secured: ControlDaemon) -> None:
    r = httpx.post(secured.url + "/files/compose", json={})
    assert r.status_code == 401
    assert r.json()["message"].startswith("unauthorized access")


def test_sdk_signed_urls_work_with_plain_http(secured: ControlDaemon) -> None:
    sandbox = sdk_sandbox(secured, TOKEN)
    path = str(secured.root / "sdk-url.txt")
    upload = sandbox.upload_url(path, user="root", use_signature_expiration=60)
    r = httpx.post(upload, files={"file": ("sdk-url.txt", b"via signed url")})
    assert r.status_code == 200, r.text
    download = sandbox.download_url(path, user="root", use_signature_expiration=60)
    assert httpx.get(download).content == b"via signed url"
    # A URL signed for another path is refused and writes nothing.
    other = str(secured.root / "other.txt")
    r = httpx.post(upload.replace("sdk-url.txt", "other.txt"), files={"file": ("o", b"o")})
    assert (r.status_code, r.json()["message"]) == (401, "invalid signature")
    assert not Path(other).exists()
