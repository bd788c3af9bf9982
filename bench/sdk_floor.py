"""What the SDK's own `commands.run` costs, with no daemon work at all.

A canned Connect server answers every `Start` at once with `start`, `end` and
the end-stream frame, as envd does for `true`, but without spawning anything.
`commands.run("true")` against it is the SDK's client-side floor; a raw
http.client `Start` against the same server is the transport's. Their
difference is what no server can take off the SDK's overhead.

    .venv/bin/python -m bench.sdk_floor [runs] [--chunked [--run-ms=N]]

`--chunked` sends the response as envd does, one chunk per frame as each is
ready, instead of one buffered body; `--run-ms=N` then waits N ms between the
start event and the end, as a real command takes time.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import threading
import time

from bench.common import summary
from envd.gen.process import process_pb2
from tests.daemon import free_port


def _envelope(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


CHUNKED = "--chunked" in sys.argv
# With --chunked: how long the "process" runs between its start and end events.
RUN_S = next((float(a.split("=", 1)[1]) / 1000 for a in sys.argv if a.startswith("--run-ms=")), 0.0)


def _frames(content_type: str) -> list[bytes]:
    start = process_pb2.StartResponse(
        event=process_pb2.ProcessEvent(start=process_pb2.ProcessEvent.StartEvent(pid=4242))
    )
    end = process_pb2.StartResponse(
        event=process_pb2.ProcessEvent(
            end=process_pb2.ProcessEvent.EndEvent(exited=True, status="exit status 0")
        )
    )
    if content_type.endswith("json"):
        frames = [
            b'{"event":{"start":{"pid":4242}}}',
            b'{"event":{"end":{"exited":true,"status":"exit status 0"}}}',
        ]
    else:
        frames = [start.SerializeToString(), end.SerializeToString()]
    return [*(_envelope(f) for f in frames), _envelope(b"{}", 2)]


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            if "content-length" in headers:
                await reader.readexactly(int(headers["content-length"]))
            else:  # chunked
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            content_type = headers.get("content-type", "application/connect+proto")
            frames = _frames(content_type)
            if not CHUNKED:
                body = b"".join(frames)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                    % (content_type.encode(), len(body), body)
                )
            else:
                # As envd streams it: the start event at once, the rest when the
                # process has ended (here: one loop turn later), each a chunk.
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n"
                    % content_type.encode()
                )
                for i, frame in enumerate(frames):
                    writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                    await writer.drain()
                    await asyncio.sleep(RUN_S if i == 0 else 0)
                writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def _serve(port: int, ready: threading.Event) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_handle, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def main() -> None:
    numbers = [a for a in sys.argv[1:] if a.isdigit()]
    runs = int(numbers[0]) if numbers else 300
    port = free_port()
    ready = threading.Event()
    threading.Thread(target=_serve, args=(port, ready), daemon=True).start()
    ready.wait(10)
    os.environ["E2B_DEBUG"] = "true"
    os.environ["E2B_SANDBOX_URL"] = f"http://127.0.0.1:{port}"
    from e2b import Sandbox  # noqa: PLC0415  # reads the environment at import

    sandbox = Sandbox.create()
    import http.client  # noqa: PLC0415

    conn = http.client.HTTPConnection("127.0.0.1", port)
    request = json.dumps({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "true"]}})

    def raw() -> None:
        conn.request(
            "POST",
            "/process.Process/Start",
            body=_envelope(request.encode()),
            headers={"content-type": "application/connect+json"},
        )
        conn.getresponse().read()

    def sdk() -> None:
        sandbox.commands.run("true")

    samples: dict[str, list[float]] = {"raw http.client Start": [], "SDK commands.run": []}
    for fn in (raw, sdk):
        for _ in range(20):
            fn()
    for _ in range(runs):
        for name, fn in zip(samples, (raw, sdk), strict=True):
            started = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - started)
    for name, values in samples.items():
        summary(f"canned server, {name}", values)


if __name__ == "__main__":
    main()
