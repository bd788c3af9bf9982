"""Signed /files URLs: the spec's vectors, the decision table, and the SDK's own URLs."""

from __future__ import annotations

import time
import urllib.parse

import pytest
from e2b import Sandbox
from e2b.connection_config import ConnectionConfig
from e2b.sandbox.signature import get_signature
from packaging.version import Version

from envd.api import signing
from envd.api.signing import check_file_access, signature
from envd.api.token import AccessToken

TOKEN = "secret-access-token"

VECTORS = [
    (
        "/path/to/resource.txt",
        "read",
        "user",
        None,
        "v1_/0lpZh0CqgZvu5XIwq2wcliltum4wAS2H36jVjFApV0",
    ),
    (
        "/path/to/demo.txt",
        "write",
        "root",
        1700000000,
        "v1_lBs3UB8YidWbWkExnyxa81tZNSbGcpXdicXNVcYFZAs",
    ),
    ("", "write", "", None, "v1_82R10Rkzh6YhxTNrfQLnRmIESjDApuO5NxM4bcZr+Ho"),
    (
        "/home/user/ünï cødé.txt",
        "read",
        "",
        1893456000,
        "v1_d3CTXQR2xI/BC6Ru0F3h99r6KqgKU8xpmg7pEntRXA0",
    ),
]


@pytest.mark.parametrize(("path", "op", "user", "exp", "expected"), VECTORS)
def test_spec_vectors(path: str, op: str, user: str, exp: int | None, expected: str) -> None:
    assert signature(path, op, user, TOKEN, exp) == expected
    assert len(expected) == 46
    # The SDK's helper agrees (None user and no expiry hash as "").
    sdk = get_signature(path, op, user or None, TOKEN)  # type: ignore[arg-type]
    if exp is None:
        assert sdk["signature"] == expected


def token(value: str | None = TOKEN) -> AccessToken:
    t = AccessToken()
    if value is not None:
        t.set(value)
    return t


def check(
    tok: AccessToken,
    header: str | None = None,
    *,
    sig: str | None = None,
    exp: int | None = None,
    path: str | None = "/a",
    user: str | None = "user",
    op: str = signing.READ,
    now: float | None = None,
) -> str | None:
    return check_file_access(
        tok,
        header,
        operation=op,
        path=path,
        username=user,
        signature=sig,
        expiration=exp,
        now=now,
    )


def test_no_token_ignores_everything() -> None:
    assert check(token(None)) is None
    assert check(token(None), "wrong", sig="garbage", exp=1) is None


def test_header_decides_alone_when_non_empty() -> None:
    good = signature("/a", "read", "user", TOKEN)
    assert check(token(), TOKEN) is None
    assert check(token(), TOKEN, sig="garbage", exp=1) is None
    assert check(token(), "wrong", sig=good) == "access token present in header but does not match"
    # An empty header counts as absent.
    assert check(token(), "", sig=good) is None
    assert check(token(), "") == "missing signature query parameter"


def test_signature_rules_in_order() -> None:
    now = 1_800_000_000
    assert check(token()) == "missing signature query parameter"
    assert check(token(), sig="") == "invalid signature"
    assert check(token(), sig="v1_nope") == "invalid signature"
    good = signature("/a", "read", "user", TOKEN)
    assert check(token(), sig=good) is None
    # Operation, path and user are all bound.
    assert check(token(), sig=good, op=signing.WRITE) == "invalid signature"
    assert check(token(), sig=good, path="/b") == "invalid signature"
    assert check(token(), sig=good, user="root") == "invalid signature"
    # Expiry: equality is still valid; compared after the signature.
    at_now = signature("/a", "read", "user", TOKEN, now)
    assert check(token(), sig=at_now, exp=now, now=now) is None
    assert check(token(), sig=at_now, exp=now, now=now + 1) == "signature is already expired"
    assert check(token(), sig="bad", exp=now, now=now + 1) == "invalid signature"
    # A signature made without expiry does not validate a URL that has one, and v.v.
    assert check(token(), sig=good, exp=now + 100, now=now) == "invalid signature"
    assert check(token(), sig=at_now, now=now) == "invalid signature"
    # Negative expirations are hashed as written.
    negative = signature("/a", "read", "user", TOKEN, -5)
    assert check(token(), sig=negative, exp=-5, now=now) == "signature is already expired"


def test_absent_and_empty_path_and_user_hash_alike() -> None:
    sig = signature("", "write", "", TOKEN)
    assert check(token(), sig=sig, path=None, user=None, op=signing.WRITE) is None
    assert check(token(), sig=sig, path="", user="", op=signing.WRITE) is None


def _query(url: str) -> dict[str, str]:
    """Form decoding, as envd's query binding does (`+` is a space)."""
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True))


def _check_url(tok: AccessToken, url: str, op: str) -> str | None:
    q = _query(url)
    exp = q.get("signature_expiration")
    return check_file_access(
        tok,
        None,
        operation=op,
        path=q.get("path"),
        username=q.get("username"),
        signature=q.get("signature"),
        expiration=None if exp is None else int(exp),
    )


@pytest.fixture
def secured_sandbox() -> Sandbox:
    config = ConnectionConfig(
        debug=True,
        sandbox_url="http://127.0.0.1:9",
        extra_sandbox_headers={"X-Access-Token": TOKEN},
    )
    return Sandbox(
        sandbox_id="debug",
        sandbox_domain=None,
        envd_version=Version("0.5.2"),
        envd_access_token=TOKEN,
        traffic_access_token=None,
        connection_config=config,
    )


@pytest.mark.parametrize(
    "path", ["/home/user/a.txt", "relative name.txt", "/tmp/ünï cødé+x&y=z.txt", "~/x"]
)
@pytest.mark.parametrize("user", [None, "root", "user"])
def test_sdk_urls_are_accepted(secured_sandbox: Sandbox, path: str, user: str | None) -> None:
    tok = token()
    download = secured_sandbox.download_url(path, user=user)
    upload = secured_sandbox.upload_url(path, user=user)
    assert _check_url(tok, download, signing.READ) is None
    assert _check_url(tok, upload, signing.WRITE) is None
    # A download URL is not an upload URL.
    assert _check_url(tok, download, signing.WRITE) == "invalid signature"
    # Another sandbox's token does not accept them.
    assert _check_url(token("other-token"), download, signing.READ) == "invalid signature"


def test_sdk_urls_with_expiration(secured_sandbox: Sandbox) -> None:
    tok = token()
    url = secured_sandbox.download_url("/a.txt", use_signature_expiration=60)
    assert "signature_expiration=" in url
    assert _check_url(tok, url, signing.READ) is None
    expired = secured_sandbox.download_url("/a.txt", use_signature_expiration=-10)
    assert _check_url(tok, expired, signing.READ) == "signature is already expired"


def test_raw_plus_in_signature_is_rejected() -> None:
    """A client that forgets to percent-encode `+` gets `invalid signature`."""
    sig = next(v[4] for v in VECTORS if "+" in v[4])
    url = "http://x/files?username=&signature=" + sig  # `+` unescaped
    assert _check_url(token(), url, signing.WRITE) == "invalid signature"
    url = "http://x/files?signature=" + urllib.parse.quote(sig, safe="")
    assert _check_url(token(), url, signing.WRITE) is None


def test_unsigned_sdk_url_without_token_is_allowed() -> None:
    """Non-secured sandboxes: the SDK signs nothing and envd checks nothing."""
    url = f"http://x/files?path=/a&username=user&t={int(time.time())}"
    assert _check_url(token(None), url, signing.READ) is None
