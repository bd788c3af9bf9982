"""POST /init against real daemons: body rules, token lifecycle, settings, MMDS."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from envd import ENVD_VERSION
from tests.connect_raw import stream_json
from tests.control import GATE_401, ControlDaemon, rfc3339
from tests.fake_mmds import FakeMMDS


def wait_until(check: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[ControlDaemon]:
    with ControlDaemon(tmp_path) as d:
        yield d


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlDaemon]:
    """Shared by tests whose requests must not change anything."""
    with ControlDaemon(tmp_path_factory.mktemp("pristine")) as d:
        yield d


@pytest.fixture
def mmds() -> Iterator[FakeMMDS]:
    with FakeMMDS() as fake:
        yield fake


@pytest.fixture
def fc_daemon(tmp_path: Path, mmds: FakeMMDS) -> Iterator[ControlDaemon]:
    """Firecracker mode: token validation consults the fake MMDS."""
    with ControlDaemon(tmp_path, mmds=mmds.address_port) as d:
        yield d


# --- body and response shape -------------------------------------------------------------


def test_success_headers(daemon: ControlDaemon) -> None:
    r = daemon.init({"timestamp": rfc3339()})
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["x-envd-version"] == ENVD_VERSION
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("body", [b"", b"null", b"{}", b' {"unknown": [1, 2]} '])
def test_empty_and_unknown_bodies_are_accepted(daemon: ControlDaemon, body: bytes) -> None:
    assert daemon.init(body).status_code == 204


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'"x"',
        b"{} {}",
        b'{"accessToken": ""}',
        b'{"accessToken": 5}',
        b'{"accessToken": "a\\u0062c"}',
        b'{"envVars": {"A": 1}}',
        b'{"envVars": []}',
        b'{"timestamp": "yesterday"}',
        b'{"timestamp": "2024-01-02T03:04:05"}',
        b'{"defaultUser": 7}',
        b'{"volumeMounts": {}}',
    ],
)
def test_bad_bodies_are_400_with_empty_body_and_change_nothing(
    pristine: ControlDaemon, body: bytes
) -> None:
    daemon = pristine
    r = daemon.init(body)
    assert r.status_code == 400
    assert r.content == b""
    assert r.headers["x-envd-version"] == ENVD_VERSION
    assert "cache-control" not in r.headers
    # Nothing was applied: no token got installed, no env var set.
    assert daemon.envs().json() == {"E2B_SANDBOX": "false"}


def test_keys_match_case_insensitively_as_go(daemon: ControlDaemon) -> None:
    assert daemon.init({"ENVVARS": {"A": "1"}}).status_code == 204
    assert daemon.envs().json()["A"] == "1"


# --- token lifecycle without MMDS (-isnotfc) ---------------------------------------------


def test_first_init_sets_token_then_only_the_same_token_is_accepted(
    daemon: ControlDaemon,
) -> None:
    assert daemon.init({"accessToken": "t1", "envVars": {"A": "1"}}).status_code == 204
    r = daemon.envs()
    assert (r.status_code, r.content) == (401, GATE_401)
    assert daemon.envs("t1").json() == {"A": "1", "E2B_SANDBOX": "false"}

    r = daemon.init({"accessToken": "t2", "envVars": {"A": "2"}})
    assert (r.status_code, r.text) == (401, "access token validation failed")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["x-envd-version"] == ENVD_VERSION

    r = daemon.init({"envVars": {"A": "3"}})
    assert (r.status_code, r.text) == (401, "access token reset not authorized")

    # Neither rejected /init changed anything.
    assert daemon.envs("t1").json()["A"] == "1"
    assert daemon.envs("t2").status_code == 401

    # The same token re-applies settings (orchestrator retries, resumes).
    assert daemon.init({"accessToken": "t1", "envVars": {"B": "1"}}).status_code == 204
    assert daemon.envs("t1").json() == {"B": "1", "E2B_SANDBOX": "false"}


def test_init_header_is_ignored_on_init(daemon: ControlDaemon) -> None:
    assert daemon.init({"accessToken": "t1"}).status_code == 204
    # /init is exempt from the gate: a wrong header does not matter, the body does.
    r = daemon.init({"accessToken": "t1"}, **{"X-Access-Token": "wrong"})
    assert r.status_code == 204


def test_replayed_older_timestamp_is_accepted_but_applies_nothing(daemon: ControlDaemon) -> None:
    newer, older = rfc3339(-1), rfc3339(-2)
    assert daemon.init({"timestamp": newer, "envVars": {"V": "new"}}).status_code == 204
    r = daemon.init({"timestamp": older, "envVars": {"V": "old"}, "defaultUser": "user"})
    assert r.status_code == 204
    assert daemon.envs().json()["V"] == "new"
    # Equal timestamps count as new.
    assert daemon.init({"timestamp": newer, "envVars": {"V": "again"}}).status_code == 204
    assert daemon.envs().json()["V"] == "again"
    # No timestamp always applies.
    assert daemon.init({"envVars": {"V": "none"}}).status_code == 204
    assert daemon.envs().json()["V"] == "none"


def test_replay_does_not_install_or_clear_a_token(daemon: ControlDaemon) -> None:
    assert daemon.init({"timestamp": rfc3339(-1), "accessToken": "t1"}).status_code == 204
    # A stale replay carrying the same token is accepted, and keeps the token.
    r = daemon.init({"timestamp": rfc3339(-5), "accessToken": "t1", "envVars": {"X": "1"}})
    assert r.status_code == 204
    assert daemon.envs("t1").json() == {"E2B_SANDBOX": "false"}


# --- settings -----------------------------------------------------------------------------


def test_env_vars_replace_user_set_and_internal_ones_survive(daemon: ControlDaemon) -> None:
    assert daemon.init({"envVars": {"A": "1", "B": "2"}}).status_code == 204
    r = daemon.init({"envVars": {"B": "3", "E2B_SANDBOX": "hijack"}})
    assert r.status_code == 204
    assert daemon.envs().json() == {"B": "3", "E2B_SANDBOX": "false"}
    assert daemon.envs().text.endswith("\n")
    # Absent or null envVars leave the set alone; {} empties it.
    assert daemon.init({"envVars": None}).status_code == 204
    assert daemon.envs().json()["B"] == "3"
    assert daemon.init({"envVars": {}}).status_code == 204
    assert daemon.envs().json() == {"E2B_SANDBOX": "false"}


def test_hyperloop_ip_updates_hosts_and_events_address(daemon: ControlDaemon) -> None:
    assert daemon.init({"hyperloopIP": "10.0.0.7"}).status_code == 204
    wait_until(lambda: daemon.envs().json().get("E2B_EVENTS_ADDRESS") == "http://10.0.0.7")
    lines = daemon.hosts.read_text().splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    assert "10.0.0.7\tevents.e2b.local" in lines

    assert daemon.init({"hyperloopIP": "10.0.0.8"}).status_code == 204
    wait_until(lambda: daemon.envs().json().get("E2B_EVENTS_ADDRESS") == "http://10.0.0.8")
    text = daemon.hosts.read_text()
    assert "10.0.0.7" not in text
    assert text.count("events.e2b.local") == 1


def test_bad_hyperloop_ip_is_only_logged(daemon: ControlDaemon) -> None:
    before = daemon.hosts.read_text()
    assert daemon.init({"hyperloopIP": "not-an-ip"}).status_code == 204
    time.sleep(0.2)
    assert "E2B_EVENTS_ADDRESS" not in daemon.envs().json()
    assert daemon.hosts.read_text() == before


CERT_A = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
CERT_B = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n\n"


def test_ca_bundle_append_persist_and_rotate(daemon: ControlDaemon) -> None:
    assert daemon.init({"caBundle": CERT_A}).status_code == 204
    assert daemon.ca_bundle.read_text() == "SYSTEM CA\n" + CERT_A + "\n"
    wait_until(daemon.ca_extra.exists)
    assert daemon.ca_extra.read_text() == CERT_A + "\n"
    assert daemon.ca_extra.stat().st_mode & 0o777 == 0o644

    # The same bundle again: nothing written.
    assert daemon.init({"caBundle": CERT_A + "\n\n"}).status_code == 204
    assert daemon.ca_bundle.read_text() == "SYSTEM CA\n" + CERT_A + "\n"

    # A new bundle is appended; the previous one is removed in the background.
    assert daemon.init({"caBundle": CERT_B}).status_code == 204
    b_normalized = CERT_B.rstrip("\n") + "\n"
    wait_until(lambda: daemon.ca_bundle.read_text() == "SYSTEM CA\n" + b_normalized)
    wait_until(lambda: daemon.ca_extra.read_text() == b_normalized)
    assert daemon.ca_bundle.stat().st_mode & 0o777 == 0o644


def test_ca_bundle_missing_system_bundle_is_400(daemon: ControlDaemon) -> None:
    daemon.ca_bundle.unlink()
    r = daemon.init({"caBundle": CERT_A, "envVars": {"BEFORE": "1"}})
    assert r.status_code == 400
    assert r.text == (
        f"failed to install CA bundle: open CA bundle: open {daemon.ca_bundle}: "
        "no such file or directory"
    )
    assert not daemon.ca_bundle.exists()  # opened for append, never created
    # Settings before the failing step stay applied.
    assert daemon.envs().json()["BEFORE"] == "1"


def test_default_user_and_workdir_are_recorded(daemon: ControlDaemon) -> None:
    # The /init answer does not validate them (an unknown user fails later requests).
    r = daemon.init({"defaultUser": "no-such-user", "defaultWorkdir": "/nowhere"})
    assert r.status_code == 204
    start = {"process": {"cmd": "true"}, "stdin": False}
    messages, end = stream_json(daemon.url, "Start", start)
    assert messages == []
    assert end == {
        "error": {"code": "unauthenticated", "message": "invalid default user: 'no-such-user'"}
    }
    # A Basic-auth user still works; the default workdir applies to it too.
    auth = {"Authorization": "Basic " + base64.b64encode(b"root:").decode()}
    messages, end = stream_json(daemon.url, "Start", start, auth)
    assert end == {
        "error": {"code": "invalid_argument", "message": "cwd '/nowhere' does not exist"}
    }


def test_default_user_and_workdir_apply_to_processes(daemon: ControlDaemon) -> None:
    assert daemon.init({"defaultUser": "user", "defaultWorkdir": "/tmp"}).status_code == 204
    start = {"process": {"cmd": "/bin/sh", "args": ["-c", "id -un; pwd; echo $HOME"]}}
    messages, end = stream_json(daemon.url, "Start", {**start, "stdin": False})
    assert end == {}
    out = b"".join(base64.b64decode(m["event"]["data"]["stdout"]) for m in messages[1:-1])
    assert out == b"user\n/tmp\n/home/user\n"


def test_nfs_mount_failure_is_400_with_command_output(daemon: ControlDaemon) -> None:
    mount_point = daemon.root / "mnt" / "vol"
    body = {"volumeMounts": [{"nfs_target": "127.0.0.1:/no-export", "path": str(mount_point)}]}
    started = time.monotonic()
    r = daemon.init(body)
    assert time.monotonic() - started < 30  # bounded by the 10 s budget, with slack
    assert r.status_code == 400
    assert r.text.startswith(
        f'failed to setup NFS volumes: failed to mount NFS at "{mount_point}": `mount -v -t nfs'
    )
    assert "lookupcache=none 127.0.0.1:/no-export" in r.text
    assert mount_point.is_dir()  # mkdir -p ran before mount


def test_nfs_mkdir_failure_is_400(daemon: ControlDaemon) -> None:
    blocker = daemon.root / "file"
    blocker.write_text("")
    path = blocker / "vol"
    r = daemon.init({"volumeMounts": [{"nfs_target": "127.0.0.1:/x", "path": str(path)}]})
    assert r.status_code == 400
    assert r.text.startswith(
        f'failed to setup NFS volumes: failed to mount NFS at "{path}": `mkdir -p {path}` failed'
    )


def test_init_lock_wait_honours_cancellation(daemon: ControlDaemon) -> None:
    """An /init whose client leaves while waiting for the lock applies nothing."""
    # A FIFO as the system bundle: the first /init's append blocks (in a worker
    # thread) until we open the read end, holding the /init lock meanwhile.
    daemon.ca_bundle.unlink()
    os.mkfifo(daemon.ca_bundle)
    first: list[int] = []
    holder = threading.Thread(
        target=lambda: first.append(daemon.init({"caBundle": CERT_A}).status_code)
    )
    holder.start()
    try:
        time.sleep(0.3)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(daemon.url + "/init", json={"envVars": {"LATE": "1"}}, timeout=0.5)
        # The daemon keeps serving while /init is stuck.
        assert httpx.get(daemon.url + "/health").status_code == 204
    finally:
        fd = os.open(daemon.ca_bundle, os.O_RDONLY | os.O_NONBLOCK)
        holder.join(10)
        os.close(fd)
    assert first == [204]
    time.sleep(0.3)  # had the waiter not given up, it would have run by now
    assert "LATE" not in daemon.envs().json()
    assert daemon.init({"envVars": {"NEXT": "1"}}).status_code == 204


# --- Firecracker mode: the MMDS hash ------------------------------------------------------


def test_fc_start_reads_mmds_ids(fc_daemon: ControlDaemon, mmds: FakeMMDS) -> None:
    wait_until(lambda: "E2B_SANDBOX_ID" in fc_daemon.envs().json())
    envs = fc_daemon.envs().json()
    assert envs["E2B_SANDBOX"] == "true"
    assert envs["E2B_SANDBOX_ID"] == "sbx-test"
    assert envs["E2B_TEMPLATE_ID"] == "tpl-test"
    wait_until((fc_daemon.run_dir / ".E2B_TEMPLATE_ID").exists)
    assert (fc_daemon.run_dir / ".E2B_SANDBOX").read_text() == "true"
    assert (fc_daemon.run_dir / ".E2B_SANDBOX_ID").read_text() == "sbx-test"
    assert (fc_daemon.run_dir / ".E2B_TEMPLATE_ID").read_text() == "tpl-test"


def test_fc_token_set_rotate_clear(fc_daemon: ControlDaemon, mmds: FakeMMDS) -> None:
    # Non-secured sandbox: the orchestrator writes hash("") and sends no token.
    mmds.set_token(None)
    assert fc_daemon.init({}).status_code == 204
    # A token that MMDS did not authorise is refused, even on a fresh envd.
    r = fc_daemon.init({"accessToken": "t1"})
    assert (r.status_code, r.text) == (401, "access token validation failed")
    assert fc_daemon.envs().status_code == 200

    # First set.
    mmds.set_token("t1")
    assert fc_daemon.init({"accessToken": "t1"}).status_code == 204
    assert fc_daemon.envs().status_code == 401
    assert fc_daemon.envs("t1").status_code == 200

    # Rotate via the hash.
    mmds.set_token("t2")
    assert fc_daemon.init({"accessToken": "t2", "envVars": {"R": "2"}}).status_code == 204
    assert fc_daemon.envs("t1").status_code == 401
    assert fc_daemon.envs("t2").json()["R"] == "2"

    # The old token is no longer enough, and a clear must be authorised.
    r = fc_daemon.init({"accessToken": "t1", "envVars": {"R": "1"}})
    assert (r.status_code, r.text) == (401, "access token validation failed")
    r = fc_daemon.init({"envVars": {"R": "0"}})
    assert (r.status_code, r.text) == (401, "access token reset not authorized")
    assert fc_daemon.envs("t2").json()["R"] == "2"

    # The current token is accepted without asking MMDS.
    gets = mmds.metadata_gets
    assert fc_daemon.init({"accessToken": "t2"}).status_code == 204
    assert mmds.metadata_gets == gets

    # Clear: the orchestrator writes hash("") and sends no token.
    mmds.set_token(None)
    assert fc_daemon.init({}).status_code == 204
    assert fc_daemon.envs().status_code == 200


def test_fc_empty_hash_counts_as_no_mmds(fc_daemon: ControlDaemon, mmds: FakeMMDS) -> None:
    mmds.access_token_hash = ""
    # No token yet and no usable hash: first-time setup.
    assert fc_daemon.init({"accessToken": "t1"}).status_code == 204
    r = fc_daemon.init({"accessToken": "t2"})
    assert (r.status_code, r.text) == (401, "access token validation failed")


def test_fc_mmds_failure_repins_route_then_falls_back(
    fc_daemon: ControlDaemon, mmds: FakeMMDS
) -> None:
    mmds.set_token("t1")
    assert fc_daemon.init({"accessToken": "t1"}).status_code == 204
    mmds.failing = True
    puts = mmds.token_puts
    r = fc_daemon.init({"accessToken": "t2"})
    assert (r.status_code, r.text) == (401, "access token validation failed")
    # One read, the re-pin, one retry (the post-/init MMDS refresh may add more).
    assert mmds.token_puts >= puts + 2
    host, port = mmds.address_port.split(":")
    rule = f"-d {host} -p tcp --dport {port} -j RETURN"
    assert fc_daemon.iptables_log.read_text().splitlines() == [
        f"-w 5 -t nat -D PREROUTING {rule}",
        f"-w 5 -t nat -I PREROUTING 1 {rule}",
        f"-w 5 -t nat -D OUTPUT {rule}",
        f"-w 5 -t nat -I OUTPUT 1 {rule}",
    ]
    # Token set and no MMDS: a clear is not authorised.
    r = fc_daemon.init({})
    assert (r.status_code, r.text) == (401, "access token reset not authorized")


def test_fc_logs_are_exported_with_ids(tmp_path: Path, mmds: FakeMMDS) -> None:
    mmds.address = mmds.collector_url
    with ControlDaemon(tmp_path, mmds=mmds.address_port) as d:
        mmds.set_token(None)
        assert d.init({"envVars": {"SECRET_NAME": "secret-value"}}).status_code == 204
        wait_until(lambda: any("env vars" in line.get("message", "") for line in mmds.logs))
    line = next(line for line in mmds.logs if "env vars" in line.get("message", ""))
    assert line["instanceID"] == "sbx-test"
    assert line["envID"] == "tpl-test"
    assert line["level"] == "debug"
    assert line["logger"] == "envd"
    assert list(line) == sorted(line)
    # Names may be logged, values never.
    assert all("secret-value" not in str(entry) for entry in mmds.logs)
