"""Stdout throughput of `head -c N /dev/zero` through `Start`, vs a plain pipe.

Goals (issue 2): >= 0.5 GB/s with the binary codec, >= 0.4 GB/s with the
JSON codec the SDKs use. The client is a thin http.client reader so that it
measures the daemon, not a client-side protobuf/JSON parser; every output
byte is decoded and counted, and must all be zero.

    .venv/bin/python -m bench.process_output [bytes]
"""

from __future__ import annotations

import http.client
import io
import json
import struct
import subprocess
import sys
import time

import pybase64

from envd.gen.process import process_pb2
from tests.daemon import Daemon

JSON_STDOUT = b'{"event":{"data":{"stdout":"'


def pipe_baseline(size: int) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    assert isinstance(proc.stdout, io.BufferedReader)
    total = 0
    while chunk := proc.stdout.read1(1 << 20):
        total += len(chunk)
    proc.wait()
    assert total == size
    return size / (time.perf_counter() - started)


def envelopes(resp: http.client.HTTPResponse):  # type: ignore[no-untyped-def]
    buf = bytearray()
    while True:
        chunk = resp.read1(1 << 20)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= 5:
            flags, length = struct.unpack(">BI", buf[:5])
            if len(buf) < 5 + length:
                break
            payload = bytes(buf[5 : 5 + length])
            del buf[: 5 + length]
            yield flags, payload


def through_start(url_port: int, size: int, codec: str) -> float:
    request = process_pb2.StartRequest(
        process=process_pb2.ProcessConfig(cmd="head", args=["-c", str(size), "/dev/zero"]),
        stdin=False,
    )
    if codec == "proto":
        body = request.SerializeToString()
    else:
        body = b'{"process":{"cmd":"head","args":["-c","%d","/dev/zero"]},"stdin":false}' % size
    conn = http.client.HTTPConnection("127.0.0.1", url_port)
    started = time.perf_counter()
    conn.request(
        "POST",
        "/process.Process/Start",
        body=struct.pack(">BI", 0, len(body)) + body,
        headers={"Content-Type": f"application/connect+{codec}", "Connect-Protocol-Version": "1"},
    )
    resp = conn.getresponse()
    total = 0
    for flags, payload in envelopes(resp):
        if flags & 2:
            end = json.loads(payload)
            assert "error" not in end, end
            break
        if codec == "proto":
            event = process_pb2.StartResponse.FromString(payload).event
            data = event.data.stdout if event.WhichOneof("event") == "data" else b""
        elif payload.startswith(JSON_STDOUT) and payload.endswith(b'"}}}'):
            # A data event; checked against json_format in tests/test_process_wire.py.
            data = pybase64.b64decode(payload[len(JSON_STDOUT) : -4], validate=True)
        else:
            json.loads(payload)  # start or keepalive: must still be valid JSON
            data = b""
        if data and data.count(0) != len(data):
            raise AssertionError("non-zero byte in output")
        total += len(data)
    elapsed = time.perf_counter() - started
    conn.close()
    assert total == size, (total, size)
    return size / elapsed


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 30
    base = pipe_baseline(size)
    print(f"baseline: plain pipe                 {base / 1e9:.2f} GB/s")
    with Daemon() as daemon:
        for codec, goal in (("proto", 0.5), ("json", 0.4)):
            rate = through_start(daemon.port, size, codec)
            print(
                f"envd Start, {codec:<5} codec             {rate / 1e9:.2f} GB/s "
                f"= {rate / base:.2f}x pipe (goal >= {goal} GB/s)"
            )


if __name__ == "__main__":
    main()
