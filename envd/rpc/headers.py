"""Request headers that both Connect services interpret the same way."""

from __future__ import annotations

import re
from collections.abc import Mapping

# Upstream's default when `Keepalive-Ping-Interval` is missing or unusable.
DEFAULT_KEEPALIVE_S = 90
# Beyond this a keepalive would never be sent anyway; keeps timers in range.
MAX_KEEPALIVE_S = 10**7
# Go's strconv.Atoi: optional sign, ASCII digits, nothing else (no spaces, no `_`).
_GO_ATOI = re.compile(r"[+-]?[0-9]+")
# Atoi fails with ErrRange outside int64; anything longer than this is out of
# range, and checking the length first keeps Python's int() off huge strings.
_INT64_MAX = 2**63 - 1
_MAX_ATOI_LEN = len(str(_INT64_MAX)) + 1


def go_atoi(raw: str) -> int | None:
    """Go's `strconv.Atoi` on a 64-bit platform; None where it returns an error."""
    if len(raw) > _MAX_ATOI_LEN or not _GO_ATOI.fullmatch(raw):
        return None
    value = int(raw)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def keepalive_interval(headers: Mapping[str, str]) -> int:
    """`Keepalive-Ping-Interval` in seconds; missing, garbage or ≤ 0 → 90 s.

    Upstream crashes on ≤ 0 (a non-positive ticker period panics); we fall
    back to the default instead (docs/compatibility.md).
    """
    raw = headers.get("keepalive-ping-interval")
    value = None if raw is None else go_atoi(raw)
    if value is None or value <= 0:
        return DEFAULT_KEEPALIVE_S
    return min(value, MAX_KEEPALIVE_S)
