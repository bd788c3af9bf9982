"""What keeping unread output costs: memory per retained byte, and throughput.

1. Memory: N processes each write S bytes with nobody attached and exit; the
   daemon's RSS growth is set against the bytes it reports keeping (the sum a
   late Connect of each then receives), with the default bounds (1 MiB per
   stream, 64 MiB in all) so the daemon-wide bound is also exercised.
2. Throughput with a subscriber attached (the backlog is not on that path),
   next to the same daemon started with `-output-buffer-stream 0`
   (upstream's discarding), interleaved in one run.

    .venv/bin/python -m bench.output_retention [processes] [bytes-each]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from bench.process_output import through_start
from tests.daemon import Daemon
from tests.test_output_retention import connect, joined, start_detached, wait_ended


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def memory(processes: int, each: int) -> None:
    with Daemon() as d:
        warm = start_detached(d.url, "echo warm")
        wait_ended(d.url, warm)
        connect(d.url, warm)
        before = rss_kib(d.pid)
        pids = [
            start_detached(d.url, f"sleep 0.2; head -c {each} /dev/urandom")
            for _ in range(processes)
        ]
        for pid in pids:
            wait_ended(d.url, pid, timeout=120)
        grown = rss_kib(d.pid) - before
        kept = sum(len(joined(connect(d.url, pid)[0], "stdout")) for pid in pids)
        after = rss_kib(d.pid)
    print(
        f"memory: {processes} processes x {each / 2**20:.1f} MiB unread: kept "
        f"{kept / 2**20:.1f} MiB, RSS +{grown / 1024:.1f} MiB while kept "
        f"({grown * 1024 / max(kept, 1):.2f} bytes of RSS per kept byte), "
        f"+{(after - before) / 1024:.1f} MiB after delivery"
    )


def throughput(size: int, rounds: int) -> None:
    rates: dict[str, list[float]] = {
        "kept (default)": [],
        "discarded (-output-buffer-stream 0)": [],
    }
    with Daemon() as kept, Daemon("-output-buffer-stream", "0") as discarded:
        for _ in range(rounds):
            for name, daemon in zip(rates, (kept, discarded), strict=True):
                rates[name].append(through_start(daemon.port, size, "proto"))
    for name, values in rates.items():
        rate = statistics.median(values) / 1e9
        print(f"throughput, subscriber attached, {name:<36} {rate:.3f} GB/s")
    ratio = statistics.median(rates["kept (default)"]) / statistics.median(
        rates["discarded (-output-buffer-stream 0)"]
    )
    print(f"ratio kept/discarded: {ratio:.3f} (goal >= 0.95)")


def main() -> None:
    processes = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    each = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 20
    memory(processes, each)
    throughput(256 << 20, 5)


if __name__ == "__main__":
    main()
