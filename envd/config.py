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
    run_dir: str = "/run/e2b"
    # Initial defaults for requests without a user/workdir (beyond upstream: -default-user).
    default_user: str = "root"
    default_workdir: str | None = None
