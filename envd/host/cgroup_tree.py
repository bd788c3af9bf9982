"""Where envd sits in the cgroup tree, and which cgroups a hierarchy freeze must leave alone."""

from __future__ import annotations

import os

PROC_SELF_CGROUP = "/proc/self/cgroup"

# What a resumed guest needs running before /init can thaw it (http-api.md §6).
LIVENESS_ALLOWLIST = (
    "init.scope",
    "system.slice/systemd-journald.service",
    "system.slice/rpcbind.service",
    "system.slice/rpcbind.socket",
    "system.slice/rpc-statd.service",
    "socats",
)


class SelfCgroupError(Exception):
    pass


def self_cgroup_path(root: str, proc_file: str = PROC_SELF_CGROUP) -> str:
    """envd's own cgroup as a path below `root`, from the `0::` line."""
    try:
        with open(proc_file) as f:
            text = f.read()
    except OSError as e:
        raise SelfCgroupError(f"open {proc_file}: {e}") from None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == "0":
            return os.path.normpath(os.path.join(root, parts[2].lstrip("/")))
    raise SelfCgroupError(f"no cgroup2 (0::) entry in {proc_file}")


def _relative(root: str, path: str) -> str | None:
    """`path` below `root` as "a/b", "." for root itself, None when outside.

    Both are normalised absolute paths; plain string work, as a walk calls this
    for every cgroup (os.path.relpath asks for the working directory each time).
    """
    if path == root:
        return "."
    prefix = root if root.endswith("/") else root + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def ancestor_chain(root: str, self_path: str) -> list[str]:
    """`root` and every cgroup down to `self_path`; only `root` when it is not below it."""
    root = os.path.normpath(root)
    rel = _relative(root, os.path.normpath(self_path))
    chain = [root]
    if rel is None or rel == ".":
        return chain
    current = root
    for part in rel.split("/"):
        current = os.path.join(current, part)
        chain.append(current)
    return chain


def descend_set(root: str, self_path: str) -> list[str]:
    """The cgroups a hierarchy sweep walks into instead of freezing.

    envd's chain, plus the parents of every allowlisted cgroup: freezing
    `system.slice` whole would stop journald below it.
    """
    order: dict[str, None] = dict.fromkeys(ancestor_chain(root, self_path))
    for entry in LIVENESS_ALLOWLIST:
        parent = os.path.dirname(os.path.join(os.path.normpath(root), entry))
        order.update(dict.fromkeys(ancestor_chain(root, parent)))
    return list(order)


def allowlisted(root: str, path: str) -> bool:
    """An allowlist entry or anything below one (`root` and `path` normalised)."""
    rel = _relative(root, path)
    if rel is None:
        return False
    return any(rel == entry or rel.startswith(entry + "/") for entry in LIVENESS_ALLOWLIST)
