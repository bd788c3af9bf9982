"""Pointing `events.e2b.local` at the hyperloop address in the hosts file."""

from __future__ import annotations

import ipaddress

EVENTS_HOST = "events.e2b.local"


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def rewrite_hosts_file(address: str, path: str) -> bool:
    """Map EVENTS_HOST to `address` alone; False when the file was already right.

    Raises ValueError for an unparsable address and OSError for I/O failures.
    The file is rewritten in place, not renamed over: in containers
    /etc/hosts is a bind mount that cannot be replaced.
    """
    family = _family(address)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []

    out: list[str] = []
    current: str | None = None
    target_line: int | None = None
    for line in lines:
        content, hash_, comment = line.partition("#")
        fields = content.split()
        if len(fields) < 2:
            out.append(line)
            continue
        addr, names = fields[0], fields[1:]
        try:
            same_family = _family(addr.split("%")[0]) == family
        except ValueError:
            same_family = False
        if same_family and EVENTS_HOST in names:
            current = current or addr
            names = [n for n in names if n != EVENTS_HOST]
            if not names:
                continue
        if addr == address and target_line is None:
            target_line = len(out)
        rebuilt = "\t".join([addr, " ".join(names)])
        out.append(rebuilt + (f" {hash_}{comment}" if hash_ else ""))
    if current == address:
        return False
    if target_line is None:
        out.append(f"{address}\t{EVENTS_HOST}")
    else:
        content, hash_, comment = out[target_line].partition("#")
        out[target_line] = f"{content.rstrip()} {EVENTS_HOST}" + (
            f" {hash_}{comment}" if hash_ else ""
        )
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("\n".join(out) + "\n")
    return True
