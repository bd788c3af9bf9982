"""Signed `/files` URLs (`signature`, `signature_expiration`).

A pure module: the signature algorithm the SDKs share with envd, and the
decision that the `GET`/`POST /files` handlers run before touching anything.

The files handlers call it through `envd.api.files.requester.check_access`,
after query binding and before the user is looked up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from envd.api.token import AccessToken

READ = "read"
WRITE = "write"

HEADER_MISMATCH = "access token present in header but does not match"
MISSING_SIGNATURE = "missing signature query parameter"
INVALID_SIGNATURE = "invalid signature"
EXPIRED = "signature is already expired"


def signature(
    path: str, operation: str, username: str, token: str | bytes, expiration: int | None = None
) -> str:
    """`v1_` + unpadded standard base64 of SHA-256 over `path:op:user:token[:exp]`."""
    secret = token if isinstance(token, bytes) else token.encode()
    # Query values that were not UTF-8 arrive as surrogate escapes: hash the
    # bytes the client sent, as Go hashes its raw string.
    parts = [_raw(path), operation.encode(), _raw(username), secret]
    if expiration is not None:
        parts.append(str(expiration).encode())
    digest = hashlib.sha256(b":".join(parts)).digest()
    return "v1_" + base64.b64encode(digest).rstrip(b"=").decode()


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# check_file_access takes a `signature` argument, which hides the function.
_sign = signature


def check_file_access(
    token: AccessToken,
    header: bytes | str | None,
    *,
    operation: str,
    path: str | None,
    username: str | None,
    signature: str | None,
    expiration: int | None,
    now: float | None = None,
) -> str | None:
    """None when the request may proceed, else the 401 message.

    `path`, `username` and `signature` are the decoded query values (None when
    absent); `expiration` is the already-parsed `signature_expiration`. With no
    token configured nothing is checked; a non-empty header decides alone;
    otherwise the signature must be present, equal, then unexpired.
    """
    if not token.is_set():
        return None
    if header:
        return None if token.equals(header) else HEADER_MISMATCH
    if signature is None:
        return MISSING_SIGNATURE
    expected = _sign(path or "", operation, username or "", token.bytes(), expiration)
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "surrogateescape")):
        return INVALID_SIGNATURE
    if expiration is not None and expiration < int(time.time() if now is None else now):
        return EXPIRED
    return None
