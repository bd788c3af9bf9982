"""Daemon settings taken from the command line."""

from __future__ import annotations

from dataclasses import dataclass

from envd import DEFAULT_PORT


@dataclass(frozen=True, slots=True)
class Config:
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    # Not inside a Firecracker VM: no MMDS, E2B_SANDBOX=false.
    is_not_fc: bool = False
    verbose: bool = False
    no_cgroups: bool = False
    cgroup_root: str = "/sys/fs/cgroup"
    # Ours, for tests: upstream hard-codes both (10 minutes; the rootfs at `/`).
    thaw_watchdog_s: float = 600.0
    fsfreeze_mount: str = "/"
    run_dir: str = "/run/e2b"
    # host:port of Firecracker's metadata service; tests point it at a fake.
    mmds_address: str = "169.254.169.254:80"
    # Files /init rewrites; configurable so tests never touch the real ones.
    hosts_path: str = "/etc/hosts"
    ca_bundle_path: str = "/etc/ssl/certs/ca-certificates.crt"
    ca_extra_path: str = "/usr/local/share/ca-certificates/e2b-ca.crt"
    # Initial defaults for requests without a user/workdir (beyond upstream: -default-user).
    default_user: str = "root"
    default_workdir: str | None = None
    # Live upgrade: where a posted binary is written (upstream: fixed), and
    # whether this start takes over from a handover blob.
    upgrade_bin: str = "/usr/bin/envd.next"
    resume_handover: bool = False
    # Unread output kept for the next Connect (services/process/backlog.py).
    output_buffer_stream: int = 1 << 20
    output_buffer_total: int = 64 << 20
    # Where loopback listeners are forwarded to (upstream hard-codes 169.254.0.21).
    forward_ip: str = "169.254.0.21"
