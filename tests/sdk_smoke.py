"""SDK smoke scenarios shared by the packaging tests (host daemon, bundle in a rootfs).

Each scenario drives an unmodified e2b SDK in debug mode against a daemon URL.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from e2b import AuthenticationException, Sandbox
from e2b.connection_config import ConnectionConfig
from e2b.sandbox.commands.command_handle import PtySize
from e2b.sandbox.filesystem.watch_handle import FilesystemEvent, FilesystemEventType
from packaging.version import Version

from envd import ENVD_VERSION


@contextlib.contextmanager
def sandbox(url: str) -> Iterator[Sandbox]:
    saved = {k: os.environ.get(k) for k in ("E2B_DEBUG", "E2B_SANDBOX_URL")}
    os.environ["E2B_DEBUG"] = "true"
    os.environ["E2B_SANDBOX_URL"] = url
    try:
        yield Sandbox.create()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_as_default_user(url: str, user: str, workdir: str) -> None:
    """A command with no user given runs as the daemon's default user, in its workdir."""
    with sandbox(url) as sbx:
        result = sbx.commands.run("id -un; pwd")
    assert result.exit_code == 0
    assert result.stdout.split() == [user, workdir]


def run_as_user(url: str) -> None:
    with sandbox(url) as sbx:
        result = sbx.commands.run("id -un; echo $HOME", user="user")
    assert result.stdout.split() == ["user", "/home/user"]


def child_environment_is_clean(url: str) -> None:
    """No loader or bundle variable of the frozen daemon reaches a child."""
    with sandbox(url) as sbx:
        result = sbx.commands.run("env", user="root")
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines() if "=" in line}
    leaked = {n for n in names if n.startswith(("LD_", "_PYI", "_MEI"))}
    assert not leaked, result.stdout


def pty_echo(url: str) -> None:
    with sandbox(url) as sbx:
        handle = sbx.pty.create(PtySize(rows=24, cols=80), user="user")
        output = bytearray()
        sbx.pty.send_stdin(handle.pid, b"echo pty-$((6*7)); exit\n")
        result = handle.wait(on_pty=output.extend)
    assert b"pty-42" in output
    assert result.exit_code == 0


def files_write_read_watch(url: str) -> None:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    with sandbox(url) as sbx:
        handle = sbx.files.watch_dir("/home/user", user="user")
        info = sbx.files.write(f"/home/user/{name}.txt", "hello envd", user="user")
        assert info.path == f"/home/user/{name}.txt"
        assert sbx.files.read(f"/home/user/{name}.txt", user="user") == "hello envd"
        deadline = time.monotonic() + 10
        seen: list[FilesystemEvent] = []
        while time.monotonic() < deadline and not any(e.name == f"{name}.txt" for e in seen):
            seen.extend(handle.get_new_events())
            time.sleep(0.1)
        handle.stop()
    events = {e.type for e in seen if e.name == f"{name}.txt"}
    assert events & {FilesystemEventType.CREATE, FilesystemEventType.WRITE}, seen


def with_token(url: str, token: str | None) -> Sandbox:
    """The SDK in debug mode sending an access token (`Sandbox.create()` there sends none)."""
    headers = {"X-Access-Token": token} if token else {}
    config = ConnectionConfig(debug=True, sandbox_url=url, extra_sandbox_headers=headers)
    return Sandbox(
        sandbox_id="debug",
        sandbox_domain=None,
        envd_version=Version(ENVD_VERSION),
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=config,
    )


def init_with_token(url: str) -> str:
    """What an orchestrator (or the Kubernetes postStart hook) does: POST /init with a
    token; from then on only requests carrying it get through. Sets the token for good."""
    token = uuid.uuid4().hex
    r = httpx.post(url + "/init", json={"accessToken": token}, timeout=30)
    assert r.status_code == 204, r.text
    assert httpx.get(url + "/envs", timeout=10).status_code == 401
    assert httpx.get(url + "/envs", headers={"X-Access-Token": token}, timeout=10).is_success
    result = with_token(url, token).commands.run("id -un", user="user")
    assert result.stdout == "user\n"
    with pytest.raises(AuthenticationException):
        with_token(url, "wrong").commands.run("true", user="user")
    return token
