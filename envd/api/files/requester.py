"""Who a `/files` request acts as and on what: its access check, its user
(the `username` parameter, never the Basic-auth user), that user's ids and
its resolved paths; the file layer's errors worded as HTTP answers."""

from __future__ import annotations

from starlette.requests import Request

from envd.api import signing
from envd.api.files.errors import FilesError
from envd.api.files.query import FileParams
from envd.api.token import access_token_header
from envd.execcontext import ExecContext
from envd.fs.dirs import EnsureDirsError, UserIdError, ensure_dirs, user_ids
from envd.permissions.paths import PathError, expand_and_resolve, go_dir
from envd.permissions.users import User, UserLookupError, lookup_user


def exec_context(request: Request) -> ExecContext:
    ctx: ExecContext = request.app.state.exec_ctx
    return ctx


def check_access(request: Request, params: FileParams, operation: str) -> None:
    """The access token in the header, else a signed URL (once a token is set).

    `/files` is exempt from the token middleware so that browsers and third
    parties can use signed URLs; this is its own gate (spec files-http §1.1).
    """
    denied = signing.check_file_access(
        request.app.state.control.access_token,
        access_token_header(request.scope),
        operation=operation,
        path=params.path,
        username=params.username,
        signature=params.signature,
        expiration=params.signature_expiration,
    )
    if denied is not None:
        raise FilesError(401, denied)


def param_or_default_user(username: str | None, ctx: ExecContext) -> User:
    """The `username` parameter (even empty) else the default user; never
    the Basic-auth user, which upstream's file endpoints ignore."""
    name = ctx.default_user if username is None else username
    try:
        return lookup_user(name)
    except UserLookupError as e:
        raise FilesError(401, f"error looking up user '{name}': {e}") from None


def user_ids_of(user: User) -> tuple[int, int]:
    try:
        return user_ids(user)
    except UserIdError as e:
        raise FilesError(500, f"error getting user ids: {e}") from None


def resolve(path: str, user: User, ctx: ExecContext, wording: str) -> str:
    """Resolved path; a bad `~name` is a 400 whose text starts with `wording`."""
    if "\x00" in path:
        # No system call takes it (Go's fail with EINVAL); refused before any is tried.
        raise FilesError(400, f"{wording}: path contains a NUL byte: invalid argument")
    try:
        return expand_and_resolve(path, user, ctx.default_workdir)
    except PathError as e:
        raise FilesError(400, f"{wording}: {e}") from None


def ensure_parent_dirs(path: str, uid: int, gid: int) -> None:
    """`path`'s missing ancestors, owned by uid:gid (blocking)."""
    try:
        ensure_dirs(go_dir(path), uid, gid)
    except EnsureDirsError as e:
        raise FilesError(500, f"error ensuring directories: {e}") from None
