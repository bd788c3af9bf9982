"""Command line in Go `flag` syntax, as upstream envd parses it.

Accepted spellings: `-name`, `--name`, `-name=value`, `-name value` (not for
booleans, which take `-name=false`). Unknown flag: usage on stderr, exit 2;
`-h`/`-help`: usage, exit 0. Template builders run `envd -version` and record
its trimmed output, so that line must stay exactly the upstream version.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from envd import DEFAULT_PORT, ENVD_VERSION, __version__
from envd.boot.frozen import restore_environment
from envd.boot.init import split_if_pid1
from envd.config import Config
from envd.permissions.users import user_exists

ENV_DEFAULT_USER = "ENVD_DEFAULT_USER"
ENV_DEFAULT_WORKDIR = "ENVD_DEFAULT_WORKDIR"


@dataclass(frozen=True, slots=True)
class Flag:
    name: str
    kind: type  # bool, int or str
    default: bool | int | str
    help: str


FLAGS: tuple[Flag, ...] = (
    Flag("version", bool, False, "print the upstream envd version implemented and exit"),
    Flag("package-version", bool, False, "print the envd-py package version and exit"),
    Flag("commit", bool, False, "print the build commit and exit"),
    Flag("port", int, DEFAULT_PORT, "a port on which the daemon should run"),
    Flag("isnotfc", bool, False, "isNotFCmode prevents sandbox metadata reading"),
    Flag("verbose", bool, False, "log to stdout as well"),
    Flag("no-cgroups", bool, False, "disable cgroups"),
    Flag("cgroup-root", str, "/sys/fs/cgroup", "cgroup root directory"),
    # Ours, for tests and local runs: upstream hard-codes these.
    Flag(
        "thaw-watchdog-ms",
        int,
        600_000,
        "thaw the workload by itself when no thaw follows a /freeze within this time",
    ),
    Flag("fsfreeze-mount", str, "/", "mount point that /fsfreeze and /fsthaw act on"),
    Flag("mmds-address", str, "169.254.169.254:80", "metadata service host:port"),
    Flag("run-dir", str, "/run/e2b", "directory for the sandbox metadata files"),
    Flag("hosts-file", str, "/etc/hosts", "hosts file that /init hyperloopIP updates"),
    Flag("ca-bundle", str, "/etc/ssl/certs/ca-certificates.crt", "system CA bundle"),
    Flag(
        "ca-extra",
        str,
        "/usr/local/share/ca-certificates/e2b-ca.crt",
        "where the installed CA is kept for update-ca-certificates",
    ),
    # Beyond upstream: the SDKs in debug mode never call /init, so a container
    # needs another way to say who runs commands by default, and where.
    Flag("default-user", str, "", f"initial default user (env {ENV_DEFAULT_USER}; default root)"),
    Flag(
        "default-workdir",
        str,
        "",
        f"initial default working directory (env {ENV_DEFAULT_WORKDIR}; default: the user's home)",
    ),
)
_BY_NAME = {f.name: f for f in FLAGS}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class UsageError(Exception):
    pass


def usage() -> str:
    lines = ["Usage of envd:"]
    for f in FLAGS:
        kind = "" if f.kind is bool else f" {f.kind.__name__}"
        default = "" if f.kind is bool or f.default in ("", 0) else f" (default {f.default!r})"
        lines.append(f"  -{f.name}{kind}\n    \t{f.help}{default}")
    return "\n".join(lines) + "\n"


def parse_flags(argv: Sequence[str]) -> dict[str, bool | int | str]:
    """Parse like Go's flag package: stops at the first non-flag or `--`."""
    values: dict[str, bool | int | str] = {f.name: f.default for f in FLAGS}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break
        body = arg[2:] if arg.startswith("--") else arg[1:]
        if not body or body[0] in "-=":
            raise UsageError(f"bad flag syntax: {arg}")
        name, has_value, value = body.partition("=")
        if name in ("h", "help"):
            raise SystemExit(_print_usage(0))
        flag = _BY_NAME.get(name)
        if flag is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        if flag.kind is bool:
            if not has_value or value in _TRUE:
                values[name] = True
            elif value in _FALSE:
                values[name] = False
            else:
                raise UsageError(f'invalid boolean value "{value}" for -{name}: parse error')
            continue
        if not has_value:
            if not args:
                raise UsageError(f"flag needs an argument: -{name}")
            value = args.pop(0)
        if flag.kind is int:
            try:
                values[name] = int(value, 0)
            except ValueError:
                raise UsageError(f'invalid value "{value}" for flag -{name}: parse error') from None
        else:
            values[name] = value
    return values


def _print_usage(code: int, error: str | None = None) -> int:
    if error:
        sys.stderr.write(error + "\n")
    sys.stderr.write(usage())
    return code


def config_from_flags(
    values: dict[str, bool | int | str], environ: Mapping[str, str] | None = None
) -> Config:
    """The daemon's settings; a flag wins over its environment variable."""
    environ = os.environ if environ is None else environ
    user = str(values["default-user"]) or environ.get(ENV_DEFAULT_USER, "")
    workdir = str(values["default-workdir"]) or environ.get(ENV_DEFAULT_WORKDIR, "") or None
    # Only a user asked for is checked: upstream's implicit root is not (a bare
    # rootfs may have no /etc/passwd at all).
    if user and not user_exists(user):
        raise UsageError(f"default user {user!r} does not exist in /etc/passwd")
    if workdir is not None and not workdir.startswith("/"):
        raise UsageError(f"default workdir {workdir!r} is not an absolute path")
    return Config(
        port=int(values["port"]),
        is_not_fc=bool(values["isnotfc"]),
        verbose=bool(values["verbose"]),
        no_cgroups=bool(values["no-cgroups"]),
        cgroup_root=str(values["cgroup-root"]),
        thaw_watchdog_s=int(values["thaw-watchdog-ms"]) / 1000,
        fsfreeze_mount=str(values["fsfreeze-mount"]),
        mmds_address=str(values["mmds-address"]),
        run_dir=str(values["run-dir"]),
        hosts_path=str(values["hosts-file"]),
        ca_bundle_path=str(values["ca-bundle"]),
        ca_extra_path=str(values["ca-extra"]),
        default_user=user or "root",
        default_workdir=workdir,
    )


def main(
    argv: Sequence[str] | None = None, serve: Callable[[Config], int] | None = None
) -> NoReturn:
    try:
        values = parse_flags(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        raise SystemExit(_print_usage(2, str(e))) from None
    if values["version"]:
        print(ENVD_VERSION)
        raise SystemExit(0)
    if values["package-version"]:
        print(__version__)
        raise SystemExit(0)
    if values["commit"]:
        print("")  # no build commit is injected into a Python package
        raise SystemExit(0)
    try:
        config = config_from_flags(values)
    except UsageError as e:
        sys.stderr.write(f"envd: {e}\n")
        raise SystemExit(2) from None
    # Before anything can spawn: children get the environment envd was started with,
    # and as PID 1 the serving process is a child of a reaper (envd/boot/).
    restore_environment()
    split_if_pid1()
    # While this process is still small: the fork server every child comes from.
    from envd.services.process import forkserver  # noqa: PLC0415

    forkserver.start()
    if serve is None:
        from envd.server import serve  # noqa: PLC0415  # keep `-version` fast
    raise SystemExit(serve(config))
