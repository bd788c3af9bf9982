"""Path resolution against a user's home, as upstream's `permissions.ExpandAndResolve`."""

from __future__ import annotations

import os.path

from envd.permissions.users import User


class PathError(Exception):
    pass


def expand_tilde(path: str, user: User) -> str:
    if not path or path[0] != "~":
        return path
    if len(path) > 1 and path[1] not in "/\\":
        raise PathError("cannot expand user-specific home dir")
    return os.path.join(user.home, path[2:]) if len(path) > 1 else user.home


def expand_and_resolve(path: str, user: User, default_path: str | None = None) -> str:
    """Tilde expansion, then relative → joined to home (cleaned); absolute kept as is.

    An empty path falls back to `default_path` (the `/init` default workdir) when one is set.
    """
    if not path and default_path:
        path = default_path
    try:
        path = expand_tilde(path, user)
    except PathError as e:
        raise PathError(f"failed to expand path '{path}' for user '{user.name}': {e}") from None
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(user.home, path))
