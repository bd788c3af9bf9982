"""Connect protocol by hand over httpx: envelopes, JSON and binary, for wire-level tests."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
from google.protobuf import json_format
from google.protobuf.message import Message

PROCESS = "/process.Process/"

M = TypeVar("M", bound=Message)


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def parse_envelopes(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while body:
        flags, size = struct.unpack(">BI", body[:5])
        out.append((flags, body[5 : 5 + size]))
        body = body[5 + size :]
    return out


def raw_frames(response: httpx.Response) -> Iterator[tuple[int, bytes]]:
    """(flags, payload) of each Connect streaming frame as it arrives."""
    buf = b""
    for chunk in response.iter_raw():
        buf += chunk
        while len(buf) >= 5:
            flags, size = struct.unpack(">BI", buf[:5])
            if len(buf) < 5 + size:
                break
            yield flags, buf[5 : 5 + size]
            buf = buf[5 + size :]


def stream_json(
    url: str, method: str, message: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A server-stream call with the JSON codec: (messages, end-stream body)."""
    r = httpx.post(
        url + PROCESS + method,
        content=envelope(json.dumps(message).encode()),
        headers={"content-type": "application/connect+json", **(headers or {})},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    frames = parse_envelopes(r.content)
    assert frames[-1][0] == 2
    return [json.loads(p) for f, p in frames[:-1]], json.loads(frames[-1][1])


def stream_proto(
    url: str,
    method: str,
    message: Message,
    response_type: type[M],
    headers: dict[str, str] | None = None,
) -> tuple[list[M], dict[str, Any]]:
    """A server-stream call with the binary codec."""
    r = httpx.post(
        url + PROCESS + method,
        content=envelope(message.SerializeToString()),
        headers={"content-type": "application/connect+proto", **(headers or {})},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    frames = parse_envelopes(r.content)
    assert frames[-1][0] == 2
    return [response_type.FromString(p) for _, p in frames[:-1]], json.loads(frames[-1][1])


def unary_json(
    url: str, method: str, message: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        url + PROCESS + method,
        json=message,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=30,
    )


def unary_proto(url: str, method: str, message: Message) -> httpx.Response:
    return httpx.post(
        url + PROCESS + method,
        content=message.SerializeToString(),
        headers={"content-type": "application/proto"},
        timeout=30,
    )


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)
