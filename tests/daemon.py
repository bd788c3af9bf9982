"""A real envd daemon in a subprocess on a free port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll until `predicate()` is true; the last answer decides after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def wait_healthy(
    url: str,
    proc: subprocess.Popen[bytes],
    timeout: float = 30.0,
    output: Callable[[], str] = str,
) -> None:
    """Poll `GET /health` until 204; fail early if `proc` exits, with `output()` attached."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"envd exited with {proc.returncode}:\n{output()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 204:
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"envd did not become healthy at {url}:\n{output()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(
        self, *args: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()
    ) -> None:
        self.port = free_port()
        # A dead loopback MMDS address: envd re-reads MMDS after every /init,
        # and test traffic must never go to the real 169.254.169.254.
        self.args = ["-port", str(self.port), "-isnotfc", "-mmds-address", "127.0.0.1:9", *args]
        # Never the machine's own cgroups or root file system: a test that wants
        # them gives a private tree (tests/cgroupfs.py) or a loop mount explicitly.
        if "-cgroup-root" not in args and "-no-cgroups" not in args:
            self.args.append("-no-cgroups")
        if "-fsfreeze-mount" not in args:
            self.args += ["-fsfreeze-mount", "/nonexistent/envd-test-fsfreeze"]
        self.env = {**os.environ, **(env or {})}
        # A command that execs the daemon (e.g. `unshare --mount ...`): same pid.
        self.prefix = list(prefix)
        fd, self.log_path = tempfile.mkstemp(prefix="envd-", suffix=".log")
        self.log = os.fdopen(fd, "wb")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> Self:
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "envd", *self.args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        wait_healthy(self.url, self.proc, timeout, self.output)
        return self

    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        assert self.proc is not None
        if self.log.closed:  # stopped already
            return self.proc.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log_path)
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
