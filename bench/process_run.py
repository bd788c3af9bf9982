"""`commands.run("true")`: envd-py vs the bash floor vs the SWE-ReX peer, interleaved in one run.

Goals (issue 12): SDK overhead over the floor <= 1.5 ms at p50 and <= 3 ms at
p99; raw Connect `Start` overhead < 2 ms.

Everything runs as the `user` account with the environment envd gives a
child (PATH, HOME, USER, LOGNAME): root's ~/.bashrc on a development machine
may run tools like `pyenv init` (~140 ms), which would drown the overhead.

- floor: `/bin/bash -l -c true` spawned directly (subprocess, as `user`);
- envd SDK: `sandbox.commands.run("true", user="user")` (e2b SDK, debug mode);
- envd raw: one `Start` through a keep-alive HTTP/1.1 client (JSON codec), read to the end;
- SWE-ReX: `swerex-remote` run as `user`, `POST /execute` of the same argv
  (installed on first use into `.venv-bench`, never a runtime dependency).

Rounds interleave the four so that machine noise hits all of them alike.

    .venv/bin/python -m bench.process_run [runs]
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import pwd
import secrets
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import summary
from tests.daemon import Daemon, free_port

USER = "user"
ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / ".venv-bench"
PEER_PACKAGE = "swe-rex==1.4.0"
ARGV = ["/bin/bash", "-l", "-c", "true"]


def peer_server() -> Path:
    """The `swerex-remote` executable, installed into its own venv on first use."""
    exe = PEER_VENV / "bin" / "swerex-remote"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        pip = [str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, PEER_PACKAGE], check=True)
    return exe


class Connection:
    """A keep-alive HTTP/1.1 connection with one helper per protocol we time."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers=headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()


def envelope(payload: bytes) -> bytes:
    return struct.pack(">BI", 0, len(payload)) + payload


def connect_start(conn: Connection) -> Callable[[], None]:
    body = envelope(
        json.dumps({"process": {"cmd": ARGV[0], "args": ARGV[1:]}, "stdin": False}).encode()
    )
    headers = {
        "content-type": "application/connect+json",
        "authorization": "Basic " + base64.b64encode(f"{USER}:".encode()).decode(),
        "connect-timeout-ms": "60000",
    }

    def call() -> None:
        status, data = conn.post("/process.Process/Start", body, headers)
        assert status == 200, data
        assert b'"end"' in data, data
        assert b'"exitCode"' not in data, data

    return call


def swerex_execute(conn: Connection, token: str) -> Callable[[], None]:
    body = json.dumps({"command": ARGV, "shell": False}).encode()
    headers = {"content-type": "application/json", "X-API-Key": token}

    def call() -> None:
        status, data = conn.post("/execute", body, headers)
        assert status == 200, data
        assert json.loads(data)["exit_code"] == 0, data

    return call


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("swerex-remote exited")
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/")
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("swerex-remote did not start")


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    account = pwd.getpwnam(USER)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": account.pw_dir,
        "USER": USER,
        "LOGNAME": USER,
    }
    groups = os.getgrouplist(USER, account.pw_gid)

    def floor() -> None:
        subprocess.run(
            ARGV,
            check=True,
            env=env,
            cwd=account.pw_dir,
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=groups,
        )

    token = secrets.token_hex(8)
    peer_port = free_port()
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) runs the peer as the user"
    peer = subprocess.Popen(
        [
            setpriv,
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--init-groups",
            "--",
            str(peer_server()),
            "--host",
            "127.0.0.1",
            "--port",
            str(peer_port),
            "--auth-token",
            token,
        ],
        env=env,
        cwd=account.pw_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(peer_port, peer)
        with Daemon() as daemon:
            os.environ["E2B_DEBUG"] = "true"
            os.environ["E2B_SANDBOX_URL"] = daemon.url
            from e2b import Sandbox  # noqa: PLC0415  # reads the environment at import

            sandbox = Sandbox.create()
            contenders: dict[str, Callable[[], None]] = {
                f"floor: bash -l -c true as {USER}": floor,
                f'envd SDK: commands.run("true", user="{USER}")': lambda: sandbox.commands.run(
                    "true", user=USER
                ),
                "envd raw Connect Start (JSON)": connect_start(Connection(daemon.port)),
                "SWE-ReX 1.4 POST /execute": swerex_execute(Connection(peer_port), token),
            }
            samples: dict[str, list[float]] = {name: [] for name in contenders}
            for _ in range(20):  # warm-up
                for fn in contenders.values():
                    fn()
            for _ in range(runs):
                for name, fn in contenders.items():
                    started = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - started)
    finally:
        peer.terminate()
        peer.wait()
    results = {name: summary(name, s) for name, s in samples.items()}
    base_name, sdk_name, raw_name, peer_name = list(results)
    base = results[base_name]
    print()
    print("| figure | p50 ms | p99 ms | overhead p50 | overhead p99 |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p50_ms'] - base['p50_ms']:+.2f} | {r['p99_ms'] - base['p99_ms']:+.2f} |"
        )
    sdk_over = results[sdk_name]["p50_ms"] - base["p50_ms"]
    peer_over = results[peer_name]["p50_ms"] - base["p50_ms"]
    print(
        f"\nSDK overhead p50 {sdk_over:.2f} ms (goal <= 1.5), "
        f"p99 {results[sdk_name]['p99_ms'] - base['p99_ms']:.2f} ms (goal <= 3); "
        f"raw Start overhead p50 {results[raw_name]['p50_ms'] - base['p50_ms']:.2f} ms (goal < 2); "
        f"peer overhead / ours = {peer_over / sdk_over if sdk_over > 0 else float('inf'):.2f}x"
    )


if __name__ == "__main__":
    main()
