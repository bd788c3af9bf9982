"""Linux accounts read straight from /etc/passwd and /etc/group.

Upstream is built without cgo, so it never consults NSS: a pure file lookup.
We do the same (not `pwd`), so LDAP/sssd users behave identically, and we
look at the files on every lookup because accounts may be added while the
daemon runs (template start scripts do `useradd`): a `stat` says whether the
lines parsed last time are still what the file holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PASSWD = "/etc/passwd"
GROUP = "/etc/group"


class UserLookupError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class User:
    name: str
    uid: str  # as written in passwd: parsing can fail and has its own error
    gid: str
    home: str
    shell: str = ""


_Signature = tuple[int, int, int, int, int]
_parsed: dict[tuple[str, tuple[str, ...]], tuple[_Signature, list[list[str]]]] = {}


def _records(path: str, skip: tuple[str, ...]) -> list[list[str]]:
    """The file's lines split at ':', those starting with `skip` left out; re-read when changed."""
    st = os.stat(path)
    signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    cached = _parsed.get((path, skip))
    if cached is not None and cached[0] == signature:
        return cached[1]
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        records = [line.rstrip("\n").split(":") for line in f if not line.startswith(skip)]
    _parsed[(path, skip)] = (signature, records)
    return records


def lookup_user(name: str, passwd: str = PASSWD) -> User:
    try:
        for parts in _records(passwd, ("#", "+", "-")):
            if len(parts) >= 7 and parts[0] == name:
                return User(parts[0], parts[2], parts[3], parts[5], parts[6])
    except OSError as e:
        raise UserLookupError(f"user: lookup username {name}: {e.strerror}") from e
    raise UserLookupError(f"user: unknown user {name}")


def user_exists(name: str) -> bool:
    try:
        lookup_user(name)
    except UserLookupError:
        return False
    return True


def supplementary_groups(user: User, primary_gid: int, group: str = GROUP) -> list[int]:
    """The primary gid plus every group listing the user as a member."""
    gids = [primary_gid]
    try:
        records = _records(group, ("#",))
    except OSError:
        return gids
    for parts in records:
        if len(parts) < 4:
            continue
        if user.name in parts[3].split(","):
            try:
                gid = int(parts[2])
            except ValueError:
                continue
            if gid not in gids:
                gids.append(gid)
    return gids


def name_for_uid(uid: int, passwd: str = PASSWD) -> str | None:
    return _name_for_id(passwd, uid)


def name_for_gid(gid: int, group: str = GROUP) -> str | None:
    return _name_for_id(group, gid)


def _name_for_id(path: str, wanted: int) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                parts = line.split(":", 3)
                if len(parts) >= 3 and parts[2] == str(wanted):
                    return parts[0]
    except OSError:
        return None
    return None
