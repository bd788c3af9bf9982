"""Packaging without the frozen bundle: daemon hooks, overlay files, image, Kubernetes.

The bundle itself (glibc floor, rootfs boot, static variant) is tested by
tests/test_packaging_rootfs.py under `make test-rootfs`.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from envd.boot.frozen import restore
from envd.cli import UsageError, config_from_flags, parse_flags
from envd.config import Config
from tests import sdk_smoke
from tests.daemon import Daemon, free_port, wait_healthy
from tests.procfs import children, states_after_reaping

REPO = Path(__file__).resolve().parent.parent
OVERLAY = REPO / "rootfs-overlay"
K8S = REPO / "packaging" / "kubernetes"
K8S_VERSION = "1.37"
VENV_BIN = Path(sys.executable).parent
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, user switch)")


# --- frozen bundle: children get the original environment -------------------


def test_restore_puts_back_the_callers_library_path() -> None:
    env = {
        "LD_LIBRARY_PATH": "/usr/lib/envd/_internal:/opt/lib",
        "LD_LIBRARY_PATH_ORIG": "/opt/lib",
        "_PYI_ARCHIVE_FILE": "/usr/lib/envd/envd",
        "_PYI_PARENT_PROCESS_LEVEL": "1",
        "PATH": "/usr/bin",
    }
    restore(env)
    assert env == {"LD_LIBRARY_PATH": "/opt/lib", "PATH": "/usr/bin"}


def test_restore_drops_a_library_path_the_caller_did_not_have() -> None:
    env = {
        "LD_LIBRARY_PATH": "/tmp/_MEI123",
        "_PYI_APPLICATION_HOME_DIR": "/tmp/_MEI123",
        "HOME": "/root",
    }
    restore(env)
    assert env == {"HOME": "/root"}


def test_restore_keeps_an_empty_original_value() -> None:
    env = {"LD_LIBRARY_PATH": "/x/_internal:", "LD_LIBRARY_PATH_ORIG": ""}
    restore(env)
    assert env == {"LD_LIBRARY_PATH": ""}


# --- initial default user and workdir (beyond upstream) ----------------------


def config(*argv: str, **environ: str) -> Config:
    return config_from_flags(parse_flags(argv), environ)


def test_default_user_and_workdir_defaults() -> None:
    c = config()
    assert (c.default_user, c.default_workdir) == ("root", None)


def test_default_user_and_workdir_from_environment() -> None:
    c = config(ENVD_DEFAULT_USER="root", ENVD_DEFAULT_WORKDIR="/srv")
    assert (c.default_user, c.default_workdir) == ("root", "/srv")


def test_flags_win_over_environment() -> None:
    c = config(
        "-default-user",
        "root",
        "-default-workdir=/tmp",
        ENVD_DEFAULT_USER="no-such-user-envd",
        ENVD_DEFAULT_WORKDIR="/srv",
    )
    assert (c.default_user, c.default_workdir) == ("root", "/tmp")


def test_unknown_default_user_is_rejected() -> None:
    with pytest.raises(UsageError, match="no-such-user-envd"):
        config(ENVD_DEFAULT_USER="no-such-user-envd")


def test_relative_default_workdir_is_rejected() -> None:
    with pytest.raises(UsageError, match="absolute"):
        config("-default-workdir", "home/user")


def test_bad_default_user_exits_2_with_a_message() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "envd", "-port", str(free_port()), "-default-user", "nobody-xyz"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "default user 'nobody-xyz' does not exist" in proc.stderr


@as_root
def test_sdk_commands_run_as_the_default_user_from_flags() -> None:
    with Daemon("-default-user", "user", "-default-workdir", "/home/user") as d:
        sdk_smoke.run_as_default_user(d.url, "user", "/home/user")


@as_root
def test_sdk_commands_run_as_the_default_user_from_environment() -> None:
    env = {"ENVD_DEFAULT_USER": "user", "ENVD_DEFAULT_WORKDIR": "/tmp"}
    with Daemon(env=env) as d:
        sdk_smoke.run_as_default_user(d.url, "user", "/tmp")


# --- PID 1: orphans reaped, signals passed on --------------------------------


class Pid1Daemon:
    """`python -m envd` as PID 1 of a fresh PID namespace (unshare)."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log_path = log
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                sys.executable,
                "-m",
                "envd",
                "-port",
                str(self.port),
                "-isnotfc",
                "-verbose",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{self.port}", self.proc)
        except RuntimeError:
            for pid in children(self.proc.pid):
                os.kill(pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            raise
        # unshare's only child is the namespace's PID 1.
        (self.init,) = children(self.proc.pid)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Killing the namespace's PID 1 kills everything in it; killing
            # unshare alone would leave them running.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def pid1(tmp_path: Path) -> Iterator[Pid1Daemon]:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs unshare and nsenter (util-linux)")
    daemon = Pid1Daemon(tmp_path / "envd.log")
    yield daemon
    daemon.stop()


@as_root
def test_pid1_serves_from_a_child_and_reaps_orphans(pid1: Pid1Daemon) -> None:
    (daemon,) = children(pid1.init)  # the serving process, before any orphan exists
    # Processes started in the namespace whose parent (nsenter's shell) exits at
    # once: the kernel hands them to the namespace's PID 1.
    spawn = "for i in 1 2 3; do sleep 1 & done"
    subprocess.run(
        ["nsenter", "-t", str(pid1.init), "-p", "--", "sh", "-c", spawn],
        check=True,
        timeout=30,
    )
    orphans = [p for p in children(pid1.init) if p != daemon]
    assert len(orphans) == 3
    assert states_after_reaping(orphans) == ["", "", ""], "orphans left as zombies"
    assert children(pid1.init) == {daemon}
    with urllib.request.urlopen(f"http://127.0.0.1:{pid1.port}/health", timeout=5) as r:
        assert r.status == 204


@as_root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_pid1_passes_the_signal_on_and_ends_with_the_daemons_status(
    pid1: Pid1Daemon, sig: signal.Signals
) -> None:
    os.kill(pid1.init, sig)
    # A PID 1 that did not handle the signal would never see it (the kernel
    # drops it). uvicorn finishes its shutdown, then re-raises the signal: PID 1
    # ends with the daemon's status, as a shell reports a process killed by it.
    assert pid1.proc.wait(timeout=30) == 128 + sig


# --- rootfs-overlay: the unit, its enablement, the OpenRC script ------------


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(OVERLAY / "etc/systemd/system/envd.service")
    return parser


def test_unit_keeps_upstreams_settings() -> None:
    u = unit()
    assert u["Unit"]["DefaultDependencies"] == "no"
    assert u["Unit"]["StartLimitIntervalSec"] == "0"
    assert "systemd-tmpfiles-setup.service" in u["Unit"]["After"].split()
    service = u["Service"]
    expected = {
        "ExecStart": "/usr/bin/envd",
        "Restart": "always",
        "User": "root",
        "Nice": "-20",
        "IOSchedulingClass": "realtime",
        "IOSchedulingPriority": "4",
        "OOMScoreAdjust": "-1000",
        "OOMPolicy": "continue",
        "Delegate": "yes",
        "CPUWeight": "1000",
        "IOWeight": "10000",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert "MemoryMin" in service
    assert "MemoryLow" in service
    assert "GOMEMLIMIT" not in service.get("Environment", "")
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_unit_is_enabled_by_an_absolute_link_and_a_preset() -> None:
    link = OVERLAY / "etc/systemd/system/multi-user.target.wants/envd.service"
    assert link.is_symlink()
    assert os.readlink(link) == "/etc/systemd/system/envd.service"
    preset = (OVERLAY / "etc/systemd/system-preset/80-envd.preset").read_text()
    assert "enable envd.service" in preset.splitlines()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    shutil.copytree(OVERLAY, tmp_path, symlinks=True, dirs_exist_ok=True)
    envd = tmp_path / "usr/bin/envd"
    envd.parent.mkdir(parents=True, exist_ok=True)
    envd.write_text("#!/bin/sh\n")
    envd.chmod(0o755)
    proc = subprocess.run(
        ["systemd-analyze", "verify", f"--root={tmp_path}", "envd.service"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [line for line in proc.stderr.splitlines() if "envd.service" in line]
    assert not problems, proc.stderr


def test_openrc_script_is_valid_shell_with_upstreams_priorities() -> None:
    script = OVERLAY / "usr/share/envd/envd.openrc"
    assert os.access(script, os.X_OK)
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    assert text.startswith("#!/sbin/openrc-run\n")
    for setting in ("--nicelevel -20", "--ionice 1:4", "--oom-score-adj -1000", "respawn_max=0"):
        assert setting in text


# --- container image ----------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run(
        [str(VENV_BIN / "hadolint"), str(REPO / "packaging/docker/Dockerfile")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_runs_envd_as_upstreams_debug_image_does() -> None:
    text = (REPO / "packaging/docker/Dockerfile").read_text()
    assert 'ENTRYPOINT ["/usr/bin/envd", "-isnotfc"]' in text
    assert "EXPOSE 49983" in text
    assert "ENVD_DEFAULT_USER=user" in text
    assert "NOPASSWD: ALL" in text
    # The public base and the overlay by default; make image passes its own base.
    assert "ARG BASE=debian:bookworm-slim\nFROM ${BASE}\n" in text
    assert "ARG OVERLAY=envd-overlay.tar.gz\n" in text
    assert "ADD dist/${OVERLAY} /\n" in text


# --- Kubernetes ---------------------------------------------------------------


def resources(name: str) -> list[dict[str, Any]]:
    return [r for r in yaml.safe_load_all((K8S / name).read_text()) if r]


@pytest.mark.parametrize("name", ["deployment.yaml", "networkpolicy.yaml"])
def test_manifests_validate_strictly(name: str) -> None:
    for resource in resources(name):
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def test_sandbox_template_pod_validates_as_a_pod() -> None:
    (template,) = resources("sandbox-template.yaml")
    assert template["apiVersion"] == "extensions.agents.x-k8s.io/v1beta1"
    # kubernetes-validate ships no schema for agent-sandbox's custom resources...
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)
    # ...but its pod template is a plain Pod.
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "envd"}}
    pod["spec"] = template["spec"]["podTemplate"]["spec"]
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert pod["spec"]["runtimeClassName"] in ("gvisor", "kata-fc")


def envd_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any]
    (container,) = pod_spec["containers"]
    return container


def test_probes_token_and_template_agree() -> None:
    deployment, service = resources("deployment.yaml")
    (template,) = resources("sandbox-template.yaml")
    pod = deployment["spec"]["template"]["spec"]
    container = envd_container(pod)
    # The SandboxTemplate runs the very same container as the Deployment.
    assert envd_container(template["spec"]["podTemplate"]["spec"]) == container
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "envd"}
    assert container["ports"] == [{"name": "envd", "containerPort": 49983, "protocol": "TCP"}]
    assert service["spec"]["ports"][0]["port"] == 49983
    # The token is read from the Secret volume and handed to /init.
    (volume,) = pod["volumes"]
    assert volume["secret"]["secretName"] == "envd-access-token"
    hook = " ".join(container["lifecycle"]["postStart"]["exec"]["command"])
    assert "/run/secrets/envd/token" in hook
    assert "/init" in hook
    assert "accessToken" in hook


def test_network_policy_admits_only_clients_on_the_envd_port() -> None:
    (policy,) = resources("networkpolicy.yaml")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 49983}]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"envd-client": "true"}}}]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
