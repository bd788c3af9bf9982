"""Path resolution against a user's home, as upstream's `permissions.ExpandAndResolve`."""

from __future__ import annotations

from envd.permissions.users import User


class PathError(Exception):
    pass


def go_clean(path: str) -> str:
    """Go's `filepath.Clean`: like `posixpath.normpath`, but `//a` becomes `/a`."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append(part)
            continue
        parts.append(part)
    joined = "/".join(parts)
    if rooted:
        return "/" + joined
    return joined or "."


def go_dir(path: str) -> str:
    """Go's `filepath.Dir`: everything before the last `/`, cleaned."""
    return go_clean(path[: path.rfind("/") + 1])


def go_join(*elems: str) -> str:
    """Go's `filepath.Join`: non-empty elements joined with `/`, then cleaned."""
    joined = "/".join(e for e in elems if e)
    return go_clean(joined) if joined else ""


def expand_tilde(path: str, user: User) -> str:
    if not path or path[0] != "~":
        return path
    if len(path) > 1 and path[1] not in "/\\":
        raise PathError("cannot expand user-specific home dir")
    # `~\x` keeps the backslash as part of a name: upstream joins `\x` to home.
    return go_join(user.home, path[1:])


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
    if path.startswith("/"):
        return path
    return go_join(user.home, path)
