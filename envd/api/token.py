"""The access token installed by `/init`, compared in constant time, and the
header a request presents it in.

Upstream keeps it in mlock'ed memory (memguard). CPython cannot pin or wipe
its objects reliably, so we keep one `bytes` object and drop it on rotation;
docs/security.md says what that does and does not protect.
"""

from __future__ import annotations

import hmac

from envd.asgi import Scope

ACCESS_TOKEN_HEADER = b"x-access-token"


class AccessToken:
    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value: bytes | None = None

    def is_set(self) -> bool:
        return self._value is not None

    def set(self, token: str | bytes) -> None:
        value = token.encode() if isinstance(token, str) else bytes(token)
        if not value:
            raise ValueError("empty token not allowed")
        self._value = value

    def clear(self) -> None:
        self._value = None

    def equals(self, candidate: str | bytes | None) -> bool:
        """True iff a token is set and `candidate` is byte-for-byte equal to it.

        An empty or absent candidate never matches.
        """
        value = self._value
        if value is None or not candidate:
            return False
        raw = candidate.encode() if isinstance(candidate, str) else candidate
        return hmac.compare_digest(value, raw)

    def bytes(self) -> bytes:
        if self._value is None:
            raise LookupError("access token not set")
        return self._value

    def __repr__(self) -> str:  # never print the secret
        return f"AccessToken(set={self.is_set()})"


def access_token_header(scope: Scope) -> bytes | None:
    """The request's `X-Access-Token` (first one), as sent."""
    for key, value in scope.get("headers", ()):
        if key == ACCESS_TOKEN_HEADER:
            return bytes(value)
    return None
