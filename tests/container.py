"""The debug image run by podman (make image), for the image tests and bench/image.py."""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

from tests.daemon import free_port
from tests.procfs import children

IMAGE = "localhost/envd-py:latest"
STATIC_IMAGE = "localhost/envd-py:static"
# runc here could not set more processes than this (EPERM above it).
NPROC_CAP = 32768


def available() -> bool:
    return shutil.which("podman") is not None


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> str:
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode:
        raise RuntimeError(f"podman {' '.join(args)}: {proc.returncode}\n{proc.stderr}")
    return proc.stdout.strip()


def ulimits() -> list[str]:
    """Limits within this process's hard limits.

    podman asks for 1048576 open files by default; where the hard limit is lower
    (this machine: 20000), runc fails to start the container.
    """
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], NPROC_CAP)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    pids = [pid]
    with contextlib.suppress(FileNotFoundError):
        for child in children(pid):
            pids += tree(child)
    return pids


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat, which tells a pid from a later reuse of it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class Container:
    """`podman run -d IMAGE` with envd's port published on 127.0.0.1 only."""

    def __init__(self, image: str = IMAGE, *args: str, timeout: float = 60.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = f"envd-test-{uuid.uuid4().hex[:10]}"
        started = time.perf_counter()
        podman(
            "run",
            "--detach",
            "--name",
            self.name,
            *ulimits(),
            "--publish",
            f"127.0.0.1:{self.port}:49983",
            image,
            *args,
        )
        try:
            self.wait_healthy(timeout)
        except RuntimeError:
            self.remove()
            raise
        self.start_to_health = time.perf_counter() - started
        self.init = int(self.inspect("{{.State.Pid}}"))
        self.conmon = int(self.inspect("{{.State.ConmonPid}}"))

    def inspect(self, template: str) -> str:
        return podman("container", "inspect", "--format", template, self.name)

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def logs(self) -> str:
        return podman("logs", self.name, check=False)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 204:
                        return
            except OSError:
                if not self.running():
                    raise RuntimeError(f"container exited:\n{self.logs()}") from None
                time.sleep(0.02)
        raise RuntimeError(f"envd did not become healthy at {self.url}:\n{self.logs()}")

    def exec(self, *command: str, user: str = "root") -> str:
        return podman("exec", "--user", user, self.name, *command)

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


def run_once(image: str, *command: str, entrypoint: str = "/bin/sh") -> str:
    """`podman run --rm` of one command in `image` (no network), its stdout."""
    return podman(
        "run", "--rm", "--network", "none", *ulimits(), "--entrypoint", entrypoint, image, *command
    )
