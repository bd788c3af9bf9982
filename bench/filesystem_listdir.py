"""ListDir of 10 000 entries: the SDK and raw Connect against `os.scandir` + `lstat`.

Run: `.venv/bin/python -m bench.filesystem_listdir`. The baseline is the least
any listing must do (read the directory and lstat every entry), measured in
the same run on the same directory. The three are measured in interleaved
rounds (baseline, raw, SDK, baseline, ...), so a neighbour's load on a shared
machine hits all of them alike.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable

import httpx

from tests.daemon import Daemon

ENTRIES = 10_000
ROUNDS = 15


def interleaved_medians(
    fns: dict[str, Callable[[], object]], rounds: int = ROUNDS
) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm caches
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(taken) for name, taken in samples.items()}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="envd-bench-") as root, Daemon() as daemon:
        for i in range(ENTRIES):
            os.close(os.open(os.path.join(root, f"file-{i:05d}.txt"), os.O_CREAT | os.O_WRONLY))

        def scandir_lstat() -> int:
            with os.scandir(root) as it:
                return len([os.lstat(e.path) for e in it])

        client = httpx.Client(timeout=60)

        def raw_connect() -> int:
            r = client.post(
                daemon.url + "/filesystem.Filesystem/ListDir", json={"path": root, "depth": 1}
            )
            return len(r.json()["entries"])

        os.environ["E2B_DEBUG"] = "true"
        os.environ["E2B_SANDBOX_URL"] = daemon.url
        from e2b import Sandbox  # noqa: PLC0415 (needs the env above)

        sandbox = Sandbox.create()

        def sdk() -> int:
            return len(sandbox.files.list(root))

        assert raw_connect() == sdk() == scandir_lstat() == ENTRIES
        medians = interleaved_medians(
            {
                "baseline": scandir_lstat,
                "raw Connect JSON (httpx)": raw_connect,
                "e2b SDK files.list": sdk,
            }
        )
        baseline = medians.pop("baseline")
        print(f"ListDir of {ENTRIES} entries, median of {ROUNDS} interleaved rounds")
        print(f"  baseline os.scandir + lstat (in-process)  {baseline * 1000:8.1f} ms")
        for name, took in medians.items():
            print(
                f"  {name:<40} {took * 1000:8.1f} ms  = {took / baseline:5.1f}x baseline, "
                f"{ENTRIES / took:,.0f} entries/s"
            )
        client.close()


if __name__ == "__main__":
    main()
