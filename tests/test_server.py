"""The daemon as a whole: command line, health, routing, shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx

from envd import ENVD_VERSION
from tests.daemon import Daemon


def run_envd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "envd", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_version_prints_upstream_version() -> None:
    for spelling in ("-version", "--version", "-version=true"):
        result = run_envd(spelling)
        assert result.returncode == 0
        assert result.stdout == ENVD_VERSION + "\n"


def test_package_version_is_separate() -> None:
    result = run_envd("-package-version")
    assert result.returncode == 0
    assert result.stdout.strip() != ""


def test_unknown_flag_exits_2_with_usage() -> None:
    result = run_envd("-bogus")
    assert result.returncode == 2
    assert "flag provided but not defined: -bogus" in result.stderr
    assert "-port" in result.stderr


def test_help_exits_0() -> None:
    result = run_envd("-h")
    assert result.returncode == 0
    assert "Usage of envd" in result.stderr


def test_bad_int_flag() -> None:
    result = run_envd("-port", "abc")
    assert result.returncode == 2
    assert 'invalid value "abc" for flag -port' in result.stderr


def test_port_in_use_exits_1(envd: Daemon) -> None:
    result = run_envd("-port", str(envd.port), "-isnotfc")
    assert result.returncode == 1


def test_health(envd: Daemon) -> None:
    r = httpx.get(envd.url + "/health")
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["cache-control"] == "no-store"


def test_head_health_is_405_as_go_chi(envd: Daemon) -> None:
    r = httpx.head(envd.url + "/health")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"


def test_unknown_path_404_text(envd: Daemon) -> None:
    r = httpx.get(envd.url + "/nope")
    assert r.status_code == 404
    assert r.text == "404 page not found\n"
    assert r.headers["x-content-type-options"] == "nosniff"


def test_unknown_basic_auth_user_is_rejected_on_every_route(envd: Daemon) -> None:
    auth = ("nobody-here", "")
    r = httpx.get(envd.url + "/health", auth=auth)
    assert r.status_code == 401
    assert r.json() == {"code": "unauthenticated", "message": "invalid username: 'nobody-here'"}


def test_sigterm_stops_daemon_quickly() -> None:
    daemon = Daemon().start()
    started = time.monotonic()
    # uvicorn re-raises the signal after its graceful shutdown, so the exit
    # status is "killed by SIGTERM", as for a Go program with no handler.
    assert daemon.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 2.0


def test_sigint_exits_130_without_a_traceback() -> None:
    daemon = Daemon().start()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(5) == 130
    assert "Traceback" not in daemon.output()
    daemon.stop()
