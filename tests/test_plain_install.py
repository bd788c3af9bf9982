"""A plain `pip install .` (runtime dependencies only, no extras), as a packager
or a template build would do it, gives a daemon that starts and runs a command.

The dev extra pins other versions of shared dependencies (the e2b SDK holds
protobuf-py back), so only a venv of its own shows what the runtime
dependencies alone resolve to. Needs PyPI (or pip's cache).
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.daemon import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
def test_plain_install_starts_and_serves_a_command(tmp_path: Path) -> None:
    # A copy of the sources: building in the work tree would leave build/ behind.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "envd", src / "envd", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", str(src)],
        check=False,
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    freeze = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    installed = {line.split("==")[0].lower() for line in freeze.splitlines()}
    assert not installed & {"e2b", "pytest", "httpx"}, freeze  # no extra slipped in

    port = free_port()
    log = tmp_path / "envd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(venv / "bin/envd"),
                "-port",
                str(port),
                "-isnotfc",
                "-mmds-address",
                "127.0.0.1:9",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, 60, log.read_text)
        request = json.dumps(
            {"process": {"cmd": "/bin/echo", "args": ["plain", "install"]}}
        ).encode()
        r = httpx.post(
            url + "/process.Process/Start",
            content=struct.pack(">BI", 0, len(request)) + request,
            headers={
                "Content-Type": "application/connect+json",
                "Authorization": "Basic cm9vdDo=",  # root:
            },
            timeout=30,
        )
        assert r.status_code == 200, r.text
        frames = []
        body = r.content
        while body:
            flags, size = struct.unpack(">BI", body[:5])
            frames.append((flags, json.loads(body[5 : 5 + size])))
            body = body[5 + size :]
        stdout = b"".join(
            base64.b64decode(f["event"]["data"]["stdout"])
            for _, f in frames
            if "data" in f.get("event", {}) and "stdout" in f["event"]["data"]
        )
        assert stdout == b"plain install\n"
        end = [f for _, f in frames if "end" in f.get("event", {})]
        assert end, frames
        assert frames[-1] == (2, {})  # the end-of-stream message, no error
    finally:
        proc.terminate()
        proc.wait(10)
    assert "Traceback" not in log.read_text()
