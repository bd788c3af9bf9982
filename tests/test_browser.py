"""CORS from a real browser: the e2b JS SDK's browser build in headless Debian chromium, on a
page served from another loopback origin, talking to a real daemon.

Needs `make browser` (npm packages and the bundle under tests/browser/) and chromium
(`make system`); `make test` does both. tests/browser/drive.mjs drives the page with Playwright
and reports results, the page's console and the preflights chromium sent.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.control import GATE_401, ControlDaemon
from tests.daemon import Daemon

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = os.environ.get("ENVD_TEST_CHROMIUM", "/usr/bin/chromium")
TOKEN = "browser-token-0123456789abcdef"


def _require_tools() -> None:
    missing = [
        str(p)
        for p in (
            BROWSER_DIR / "dist" / "page.bundle.js",
            BROWSER_DIR / "node_modules" / "playwright-core",
            Path(CHROMIUM),
        )
        if not p.exists()
    ]
    if shutil.which("node") is None:
        missing.append("node")
    if missing:
        pytest.fail(f"browser test tools missing: {missing}; run `make system browser`")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    """The test page, served by its own origin (another loopback port than the daemon's)."""
    _require_tools()
    handler = functools.partial(_QuietHandler, directory=str(BROWSER_DIR))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlDaemon]:
    with ControlDaemon(tmp_path_factory.mktemp("browser-secured")) as daemon:
        assert daemon.init({"accessToken": TOKEN}).status_code == 204
        yield daemon


def drive(page_url: str, *calls: tuple[str, list[Any]]) -> dict[str, Any]:
    """Runs window.envdTest calls in one chromium page; returns drive.mjs's report."""
    spec = {
        "pageUrl": page_url,
        "executablePath": CHROMIUM,
        "calls": [{"fn": fn, "args": args} for fn, args in calls],
    }
    try:
        done = subprocess.run(
            ["node", "drive.mjs", json.dumps(spec)],
            cwd=BROWSER_DIR,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"chromium driver timed out; stderr:\n{e.stderr!s}")
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"driver exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    assert "fatal" not in report, f"{report['fatal']}\nconsole: {report['console']}\n{done.stderr}"
    return report


def result(report: dict[str, Any], index: int) -> Any:
    outcome = report["results"][index]
    assert outcome["ok"], (
        f"call {index} failed in the page: {outcome['error']}\n"
        f"console: {json.dumps(report['console'], indent=1)}\n"
        f"page errors: {report['pageErrors']}"
    )
    return outcome["value"]


def preflight_to(report: dict[str, Any], url: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [p for p in report["preflights"] if p["url"].startswith(url)]
    assert found, f"no preflight to {url}; preflights: {report['preflights']}"
    return found[0]


def assert_preflight_allowed(preflight: dict[str, Any], method: str) -> None:
    request, response = preflight["requestHeaders"], preflight["responseHeaders"]
    assert preflight["status"] == 204, preflight
    assert response["access-control-allow-origin"] == "*"
    assert response["access-control-allow-methods"] == method
    assert response["access-control-allow-headers"] == request["Access-Control-Request-Headers"]
    assert response["access-control-max-age"] == "7200"
    assert "access-control-allow-credentials" not in response


def test_sdk_runs_a_command_from_another_origin(envd: Daemon, page_url: str) -> None:
    assert httpx.URL(page_url).port != envd.port
    report = drive(
        page_url,
        # As `user`: root's login shell reads the machine's own dotfiles, whose stderr
        # noise (a missing pyenv, say) is not ours to assert on.
        ("runCommand", [envd.url, "echo hello from $0; echo oops >&2; exit 3", None, "user"]),
        ("runCommand", [envd.url, "printf '%s' \"$((6 * 7))\"", None, "user"]),
    )
    # A non-zero exit is a CommandExitError in the SDK: seen as a failed call.
    failed = report["results"][0]
    assert not failed["ok"]
    assert "exit status 3" in failed["error"], failed
    assert result(report, 1) == {"exitCode": 0, "stdout": "42", "stderr": ""}
    start = preflight_to(report, envd.url + "/process.Process/Start")
    assert start["requestHeaders"]["Origin"] == page_url.rsplit("/", 1)[0]
    # Connect's own headers are among those the browser asked to send.
    assert "connect-protocol-version" in start["requestHeaders"]["Access-Control-Request-Headers"]
    assert_preflight_allowed(start, "POST")


def test_access_token_gate_seen_from_the_browser(secured: ControlDaemon, page_url: str) -> None:
    headers = {"X-Access-Token": TOKEN}
    report = drive(
        page_url,
        ("runCommand", [secured.url, "echo secured", TOKEN]),
        ("errorText", ["runCommand", secured.url, "echo nope", "wrong-token"]),
        ("rawFetch", [secured.url + "/envs", {}]),
        ("rawFetch", [secured.url + "/envs", {"headers": headers}]),
    )
    assert result(report, 0)["stdout"] == "secured\n"
    assert result(report, 1).startswith("AuthenticationError"), result(report, 1)
    # The 401 carries the CORS headers, or the page could not even read its status.
    rejected = result(report, 2)
    assert rejected["status"] == 401
    assert rejected["body"].encode() == GATE_401
    accepted = result(report, 3)
    assert accepted["status"] == 200
    assert json.loads(accepted["body"]) == httpx.get(secured.url + "/envs", headers=headers).json()
    # The token header needs a preflight; it is answered before the gate.
    assert_preflight_allowed(preflight_to(report, secured.url + "/envs"), "GET")


def test_sdk_reads_a_file_from_another_origin(envd: Daemon, page_url: str, tmp_path: Path) -> None:
    target = tmp_path / "browser.txt"
    target.write_text("read by chromium\n")
    report = drive(page_url, ("readFile", [envd.url, str(target), None]))
    assert result(report, 0) == "read by chromium\n"
    assert_preflight_allowed(preflight_to(report, envd.url + "/files"), "GET")
