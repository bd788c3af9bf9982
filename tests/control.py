"""Helpers for the control-plane tests: daemons with private files, /init calls."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path
from typing import Any

import httpx
from e2b import Sandbox

from tests.daemon import Daemon
from tests.sdk_smoke import with_token

GATE_401 = (
    b'{"code":401,"message":"unauthorized access, please provide a valid access token'
    b' or method signing if supported"}\n'
)


def rfc3339(offset_s: float = -1.0) -> str:
    """Now + offset. The default (1 s in the past) never makes envd step the real clock."""
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ControlDaemon(Daemon):
    """A daemon whose /init files (hosts, CA, run dir) live in `root`, with a fake iptables."""

    def __init__(self, root: Path, *args: str, mmds: str | None = None) -> None:
        self.root = root
        self.run_dir = root / "run"
        self.hosts = root / "hosts"
        self.ca_bundle = root / "ca-certificates.crt"
        self.ca_extra = root / "extra" / "e2b-ca.crt"
        self.iptables_log = root / "iptables.log"
        bin_dir = root / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        fake = bin_dir / "iptables"
        fake.write_text(f'#!/bin/sh\necho "$@" >> {self.iptables_log}\n')
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
        self.hosts.write_text("127.0.0.1\tlocalhost\n")
        self.ca_bundle.write_text("SYSTEM CA\n")
        flags = [
            "-run-dir",
            str(self.run_dir),
            "-hosts-file",
            str(self.hosts),
            "-ca-bundle",
            str(self.ca_bundle),
            "-ca-extra",
            str(self.ca_extra),
        ]
        if mmds is not None:
            flags += ["-isnotfc=false", "-mmds-address", mmds]
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        super().__init__(*flags, *args, env=env)

    def init(self, body: dict[str, Any] | bytes | None = None, **headers: str) -> httpx.Response:
        if isinstance(body, dict):
            return httpx.post(self.url + "/init", json=body, headers=headers, timeout=30)
        return httpx.post(self.url + "/init", content=body or b"", headers=headers, timeout=30)

    def envs(self, token: str | None = None) -> httpx.Response:
        headers = {"X-Access-Token": token} if token else {}
        return httpx.get(self.url + "/envs", headers=headers, timeout=10)


def sdk_sandbox(daemon: Daemon, token: str | None) -> Sandbox:
    """The e2b SDK in debug mode with an envd access token, as for a secured sandbox."""
    return with_token(daemon.url, token)
