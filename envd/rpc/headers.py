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


def keepalive_interval(headers: Mapping[str, str]) -> int:
    """`Keepalive-Ping-Interval` in seconds; missing, garbage or ≤ 0 → 90 s.

    Upstream crashes on ≤ 0 (a non-positive ticker period panics); we fall
    back to the default instead (docs/compatibility.md).
    """
    raw = headers.get("keepalive-ping-interval")
    if raw is None or not _GO_ATOI.fullmatch(raw):
        return DEFAULT_KEEPALIVE_S
    value = int(raw)
    return min(value, MAX_KEEPALIVE_S) if value > 0 else DEFAULT_KEEPALIVE_S
