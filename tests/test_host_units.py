"""Unit tests of the control plane's host helpers and log exporter."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import httpx
import pytest

from envd.api.responses import json_error_body
from envd.host.clock import should_set_system_time
from envd.host.hosts import rewrite_hosts_file
from envd.host.mmds import MMDSError, parse_opts
from envd.logs import MAX_BUFFERED_BYTES, MAX_LINE_BYTES, HTTPExporter, JSONFormatter, RateLimiter
from tests.daemon import Daemon

MS = 1_000_000


@pytest.mark.parametrize(
    ("sandbox_ms", "expected"),
    [(-51, True), (-50, False), (0, False), (5000, False), (5001, True)],
)
def test_clock_window(sandbox_ms: int, expected: bool) -> None:
    host = 1_700_000_000_000 * MS
    assert should_set_system_time(host + sandbox_ms * MS, host) is expected


def test_hosts_file_rewrite(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n# comment\n10.0.0.1 other events.e2b.local\n")
    assert rewrite_hosts_file("10.0.0.9", str(hosts))
    lines = hosts.read_text().splitlines()
    assert lines == [
        "127.0.0.1\tlocalhost",
        "# comment",
        "10.0.0.1\tother",
        "10.0.0.9\tevents.e2b.local",
    ]
    # Already right: not rewritten.
    mtime = hosts.stat().st_mtime_ns
    assert not rewrite_hosts_file("10.0.0.9", str(hosts))
    assert hosts.stat().st_mtime_ns == mtime
    # An existing line for the address gets the name appended.
    assert rewrite_hosts_file("127.0.0.1", str(hosts))
    assert hosts.read_text().splitlines()[0] == "127.0.0.1\tlocalhost events.e2b.local"
    assert hosts.read_text().count("events.e2b.local") == 1
    # IPv6 entries are separate from IPv4 ones.
    assert rewrite_hosts_file("fd00::1", str(hosts))
    assert hosts.read_text().count("events.e2b.local") == 2
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        rewrite_hosts_file("300.1.1.1", str(hosts))


def test_mmds_opts_parsing() -> None:
    opts = parse_opts(b'{"instanceID":"i","envID":"e","address":"http://c","extra":1}')
    assert (opts.sandbox_id, opts.template_id, opts.logs_collector_address) == (
        "i",
        "e",
        "http://c",
    )
    assert opts.access_token_hash == ""
    assert parse_opts(b"null").sandbox_id == ""
    for bad in (b"", b"[]", b'{"instanceID": 5}'):
        with pytest.raises(MMDSError):
            parse_opts(bad)


def test_json_error_body_is_go_encoded() -> None:
    assert json_error_body(401, "a<b>&c") == b'{"code":401,"message":"a\\u003cb\\u003e\\u0026c"}\n'
    bad_utf8 = b"\xff".decode("utf-8", "surrogateescape")
    assert json_error_body(400, bad_utf8) == '{"code":400,"message":"\ufffd"}\n'.encode()


def test_rate_limiter_counts_suppressed() -> None:
    limiter = RateLimiter(60.0)
    assert limiter.allow() == (True, 0)
    assert limiter.allow() == (False, 0)
    assert limiter.allow() == (False, 0)
    limiter._last = -1e9  # the floor has passed
    assert limiter.allow() == (True, 2)


def record(message: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("envd.api", logging.DEBUG, __file__, 1, message, None, None)
    rec.__dict__.update(extra)
    return rec


def test_json_formatter_shape() -> None:
    line = json.loads(JSONFormatter().format(record("hello {}".format("x"), operation_id="7")))
    assert line["level"] == "debug"
    assert line["logger"] == "envd"
    assert line["operation_id"] == "7"
    assert line["message"] == "hello x"
    assert line["timestamp"].endswith("Z")
    assert "T" in line["timestamp"]


def test_exporter_buffer_is_bounded() -> None:
    exporter = HTTPExporter()
    line = b"x" * 1000
    for _ in range(3 * MAX_BUFFERED_BYTES // len(line)):
        exporter.add_line(line)
    assert exporter.buffered_bytes <= MAX_BUFFERED_BYTES
    assert exporter.buffered_bytes > MAX_BUFFERED_BYTES - len(line)
    before = exporter.buffered_bytes
    exporter.add_line(b"y" * (MAX_LINE_BYTES + 1))  # dropped outright
    assert exporter.buffered_bytes == before


async def test_exporter_posts_each_line_with_ids() -> None:
    received: list[bytes] = []

    async def collector(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(h.split(b":")[1])
            for h in head.split(b"\r\n")
            if h.lower().startswith(b"content-length")
        )
        received.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(collector, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    exporter = HTTPExporter()
    try:
        exporter.emit(record("before options"))
        exporter.configure("sbx", "tpl", f"http://127.0.0.1:{port}/logs")
        exporter.emit(record("after options"))
        for _ in range(200):
            if len(received) == 2:
                break
            await asyncio.sleep(0.02)
    finally:
        await exporter.aclose()
        server.close()
        await server.wait_closed()
    lines = [json.loads(b) for b in received]
    assert [x["message"] for x in lines] == ["before options", "after options"]
    assert all(x["instanceID"] == "sbx" and x["envID"] == "tpl" for x in lines)
    assert all(list(x) == sorted(x) for x in lines)


def test_envs_and_metrics_routes(envd: Daemon) -> None:
    r = httpx.get(envd.url + "/envs")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    assert r.json()["E2B_SANDBOX"] == "false"

    r = httpx.get(envd.url + "/metrics")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    assert r.text.endswith("\n")
    assert r.text.count("\n") == 1
    data = r.json()
    assert list(data) == [
        "ts",
        "cpu_count",
        "cpu_used_pct",
        "mem_total_mib",
        "mem_used_mib",
        "mem_total",
        "mem_used",
        "mem_cache",
        "disk_used",
        "disk_total",
    ]
    assert all(isinstance(v, int) for k, v in data.items() if k != "cpu_used_pct")
    assert 0 <= data["cpu_used_pct"] <= 100
    assert 0 < data["mem_used"] <= data["mem_total"]
    assert data["mem_total_mib"] == data["mem_total"] // 1048576
    assert 0 < data["disk_used"] <= data["disk_total"]
    assert abs(data["ts"] - time.time()) < 60
    assert httpx.head(envd.url + "/metrics").status_code == 405
    assert httpx.post(envd.url + "/envs").status_code == 405
