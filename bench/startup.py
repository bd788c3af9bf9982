"""Cold start to the first `/health` 204, and idle RSS.

Goal (issue 2): < 250 ms from the virtualenv, idle RSS < 50 MiB.
Baseline, same run: the bare interpreter start (`python -c pass`), which no
Python daemon can beat.

envd's bytecode is compiled first, as any install does (pip, the bundle): an
editable install has none, and with PYTHONDONTWRITEBYTECODE set every start
would otherwise compile all of envd again. Besides wall time, the daemon's
on-CPU time to the 204 is printed: on a shared machine it varies less.

    .venv/bin/python -m bench.startup [runs]
"""

from __future__ import annotations

import compileall
import http.client
import os
import subprocess
import sys
import time

import envd
from bench.common import summary
from tests.daemon import free_port


def wait_health(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"envd exited with {proc.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 204:
                return
        except OSError:
            time.sleep(0.002)
        finally:
            conn.close()
    raise RuntimeError("no /health 204")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def on_cpu_s(pid: int) -> float:
    """Time all of the process's threads have run so far (schedstat, ns resolution)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def cold_start() -> tuple[float, float, float]:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "envd", "-port", str(port), "-isnotfc"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_health(port, proc)
        elapsed = time.perf_counter() - started
        cpu = on_cpu_s(proc.pid)
        time.sleep(0.5)  # let start-up garbage settle before reading RSS
        return elapsed, cpu, rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def bare_python() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    compileall.compile_dir(os.path.dirname(envd.__file__), quiet=1)
    base = summary("baseline: python -c pass", [bare_python() for _ in range(runs)])
    results = [cold_start() for _ in range(runs)]
    start = summary("envd cold start to /health 204", [r[0] for r in results])
    summary("envd on-CPU time to /health 204", [r[1] for r in results])
    rss = max(r[2] for r in results)
    print(f"envd idle RSS (max of runs): {rss:.1f} MiB  (goal < 50 MiB)")
    ratio = start["p50_ms"] / base["p50_ms"]
    print(
        f"cold start p50 = {start['p50_ms']:.0f} ms = {ratio:.1f}x bare interpreter (goal < 250 ms)"
    )


if __name__ == "__main__":
    main()
