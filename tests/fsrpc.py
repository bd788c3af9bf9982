"""Raw Connect calls to the filesystem service, for exact codes, messages and frames."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx

from tests.connect_raw import raw_frames

SERVICE = "/filesystem.Filesystem/"


def auth(user: str | None) -> dict[str, str]:
    if user is None:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def call(
    url: str, method: str, body: dict[str, Any], user: str | None = None
) -> tuple[int, dict[str, Any]]:
    r = httpx.post(url + SERVICE + method, json=body, headers=auth(user), timeout=30)
    return r.status_code, r.json()


def ok(url: str, method: str, body: dict[str, Any], user: str | None = None) -> dict[str, Any]:
    status, data = call(url, method, body, user)
    assert status == 200, data
    return data


def error(url: str, method: str, body: dict[str, Any], user: str | None = None) -> tuple[str, str]:
    status, data = call(url, method, body, user)
    assert status != 200, data
    return data["code"], data["message"]


def envelope(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(payload)) + payload


def frames(response: httpx.Response) -> Iterator[tuple[int, dict[str, Any]]]:
    """(flags, JSON) of each Connect streaming frame as it arrives."""
    for flags, payload in raw_frames(response):
        yield flags, json.loads(payload)


def watch(
    client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Any:
    """A WatchDir stream (context manager yielding the httpx response)."""
    return client.stream(
        "POST",
        url + SERVICE + "WatchDir",
        content=envelope(body),
        headers={"Content-Type": "application/connect+json", **(headers or {})},
        timeout=httpx.Timeout(30, read=30),
    )
