"""The `/init` body, decoded with the type rules of upstream's Go structs.

Go's encoding/json matches keys case-insensitively (last one wins), turns
`null` into "absent", rejects a value of the wrong type, and the access token
has its own decoder that refuses an empty string or any escape sequence.
"""

from __future__ import annotations

import calendar
import datetime
import json
import re
from dataclasses import dataclass
from json import scanner
from typing import Any

from envd.host.nfs import VolumeMount


class InitBodyError(ValueError):
    pass


@dataclass(slots=True)
class InitRequest:
    access_token: str | None = None
    timestamp_ns: int | None = None
    env_vars: dict[str, str] | None = None
    default_user: str | None = None
    default_workdir: str | None = None
    ca_bundle: str | None = None
    volume_mounts: list[VolumeMount] | None = None
    lifecycle_id: str | None = None
    hyperloop_ip: str | None = None

    def __repr__(self) -> str:  # keeps the token and env values out of any log
        return "InitRequest(...)"


class _Pairs(list[tuple[str, Any]]):
    """A decoded JSON object as its (key, value) pairs in source order."""

    __slots__ = ()


class _EscapedStr(str):
    """A decoded JSON string whose source text contained a backslash."""

    __slots__ = ()


def _parse_string(s: str, end: int, strict: bool = True) -> tuple[str, int]:
    # The decoder's own string scanner (C or Python), which typeshed does not declare.
    value: str
    new_end: int
    value, new_end = json.decoder.scanstring(s, end, strict)  # type: ignore[attr-defined]
    if "\\" in s[end : new_end - 1]:
        return _EscapedStr(value), new_end
    return value, new_end


def _decoder() -> json.JSONDecoder:
    decoder = json.JSONDecoder(object_pairs_hook=_Pairs)
    decoder.parse_string = _parse_string  # type: ignore[attr-defined]
    # The C scanner ignores parse_string; the pure-Python one honours it.
    decoder.scan_once = scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


_DECODER = _decoder()
# The whitespace JSON allows around a value (what json.loads skips).
_JSON_SPACE = " \t\n\r"

_FIELDS = {
    name.lower(): name
    for name in (
        "accessToken",
        "timestamp",
        "envVars",
        "defaultUser",
        "defaultWorkdir",
        "caBundle",
        "volumeMounts",
        "lifecycleID",
        "hyperloopIP",
    )
}

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})\Z"
)


def parse_rfc3339_ns(text: str) -> int:
    """Unix time in nanoseconds of an RFC 3339 timestamp (fraction optional, zone required)."""
    m = _RFC3339.match(text)
    if m is None:
        raise InitBodyError(f"parsing time {text!r} as RFC 3339")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    try:
        datetime.datetime(year, month, day, hour, minute, second)
    except ValueError as e:
        raise InitBodyError(f"parsing time {text!r}: {e}") from None
    fraction = (m.group(7) or "")[:9].ljust(9, "0")
    zone = m.group(8)
    offset = 0
    if zone != "Z":
        zh, zm = int(zone[1:3]), int(zone[4:6])
        if zh >= 24 or zm >= 60:
            raise InitBodyError(f"parsing time {text!r}: time zone offset out of range")
        offset = (zh * 3600 + zm * 60) * (-1 if zone[0] == "-" else 1)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    return seconds * 1_000_000_000 + int(fraction)


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InitBodyError(f"json: cannot unmarshal into field {field} of type string")
    return str(value)


def _object(value: Any, field: str) -> list[tuple[str, Any]]:
    if not isinstance(value, _Pairs):
        raise InitBodyError(f"json: cannot unmarshal into field {field} of type object")
    return value


def parse_init_body(body: bytes) -> InitRequest:
    """Decode a non-empty body; raises InitBodyError for anything Go would refuse."""
    try:
        text = body.decode("utf-8")
        data, end = _DECODER.raw_decode(text, len(text) - len(text.lstrip(_JSON_SPACE)))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # RecursionError: thousands of nested `[` (Go's decoder has a depth limit too).
        raise InitBodyError(str(e) or type(e).__name__) from None
    if text[end:].strip(_JSON_SPACE):
        raise InitBodyError("invalid character after top-level value")
    request = InitRequest()
    if data is None:
        return request
    for key, value in _object(data, "body"):
        field = _FIELDS.get(key.lower())
        if field is None or value is None:
            if field is not None:
                setattr(request, _ATTR[field], None)
            continue
        _apply(request, field, value)
    return request


_ATTR = {
    "accessToken": "access_token",
    "timestamp": "timestamp_ns",
    "envVars": "env_vars",
    "defaultUser": "default_user",
    "defaultWorkdir": "default_workdir",
    "caBundle": "ca_bundle",
    "volumeMounts": "volume_mounts",
    "lifecycleID": "lifecycle_id",
    "hyperloopIP": "hyperloop_ip",
}


def _apply(request: InitRequest, field: str, value: Any) -> None:
    if field == "accessToken":
        if not isinstance(value, str) or isinstance(value, _EscapedStr):
            raise InitBodyError("invalid secure token")
        if value == "":
            raise InitBodyError("empty token not allowed")
        request.access_token = str(value)
    elif field == "timestamp":
        request.timestamp_ns = parse_rfc3339_ns(_string(value, field))
    elif field == "envVars":
        envs: dict[str, str] = {}
        for name, v in _object(value, field):
            envs[str(name)] = "" if v is None else _string(v, field)
        request.env_vars = envs
    elif field == "volumeMounts":
        if not isinstance(value, list) or isinstance(value, _Pairs):
            raise InitBodyError("json: cannot unmarshal into field volumeMounts of type array")
        mounts = []
        for item in value:
            target = path = ""
            if item is not None:
                for k, v in _object(item, field):
                    lowered = k.lower()
                    if lowered == "nfs_target" and v is not None:
                        target = _string(v, "nfs_target")
                    elif lowered == "path" and v is not None:
                        path = _string(v, "path")
            mounts.append(VolumeMount(target, path))
        request.volume_mounts = mounts
    else:
        setattr(request, _ATTR[field], _string(value, field))
