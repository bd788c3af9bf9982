"""Watch latency: a file write to the event at an SDK client, against raw inotify.

Run: `.venv/bin/python -m bench.filesystem_watch`. The baseline is the same
write observed by an inotify fd in this process (the kernel's own delivery
time); ours goes through envd and the async SDK's `watch_dir` stream. Goal:
p50 ≤ 10 ms.
"""

from __future__ import annotations

import asyncio
import os
import select
import statistics
import tempfile
import time

from envd.services.filesystem import inotify
from tests.daemon import Daemon

ROUNDS = 300


def write(path: str) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    os.write(fd, b"x")
    os.close(fd)


def raw_inotify(directory: str) -> list[float]:
    fd = inotify.inotify_init()
    inotify.add_watch(fd, directory, inotify.WATCH_MASK)
    samples = []
    try:
        for i in range(ROUNDS):
            started = time.perf_counter()
            write(os.path.join(directory, f"raw-{i}"))
            select.select([fd], [], [])
            samples.append(time.perf_counter() - started)
            while True:
                try:
                    os.read(fd, 65536)
                except BlockingIOError:
                    break
    finally:
        os.close(fd)
    return samples


async def sdk_stream(directory: str) -> list[float]:
    from e2b import AsyncSandbox  # noqa: PLC0415 (needs the env set by main)

    sandbox = await AsyncSandbox.create()
    arrived: asyncio.Queue[str] = asyncio.Queue()
    handle = await sandbox.files.watch_dir(
        directory, lambda e: arrived.put_nowait(e.name), timeout=0
    )
    samples = []
    try:
        for i in range(ROUNDS):
            name = f"sdk-{i}"
            started = time.perf_counter()
            write(os.path.join(directory, name))
            while await arrived.get() != name:
                pass
            samples.append(time.perf_counter() - started)
            await asyncio.sleep(0.002)  # let the WRITE that follows drain
            while not arrived.empty():
                arrived.get_nowait()
    finally:
        await handle.stop()
    return samples


def report(name: str, samples: list[float], baseline: float | None = None) -> float:
    ms = sorted(s * 1000 for s in samples)
    p50 = statistics.median(ms)
    p90 = ms[int(len(ms) * 0.9)]
    ratio = f"  = {p50 / baseline:6.1f}x baseline p50" if baseline else ""
    print(f"  {name:<36} p50 {p50:7.3f} ms  p90 {p90:7.3f} ms{ratio}")
    return p50


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="envd-bench-") as directory, Daemon() as daemon:
        os.environ["E2B_DEBUG"] = "true"
        os.environ["E2B_SANDBOX_URL"] = daemon.url
        print(f"write → event latency, {ROUNDS} rounds")
        base = report("baseline raw inotify (in-process)", raw_inotify(directory))
        report("envd WatchDir → async SDK", asyncio.run(sdk_stream(directory)), base)


if __name__ == "__main__":
    main()
