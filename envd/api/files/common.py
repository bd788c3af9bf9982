"""Steps shared by the file endpoints: user selection and errno wording."""

from __future__ import annotations

import errno

from starlette.requests import Request

from envd.api import signing
from envd.api.files.errors import FilesError
from envd.api.files.query import FileParams
from envd.api.token import access_token_header
from envd.execcontext import ExecContext
from envd.permissions.paths import PathError, expand_and_resolve
from envd.permissions.users import User, UserLookupError, lookup_user
from envd.services.filesystem.dirs import UserIdError, user_ids

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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


def request_user(username: str | None, ctx: ExecContext) -> User:
    """The `username` parameter (even empty) else the default user; never
    the Basic-auth user, which upstream's file endpoints ignore."""
    name = ctx.default_user if username is None else username
    try:
        return lookup_user(name)
    except UserLookupError as e:
        raise FilesError(401, f"error looking up user '{name}': {e}") from None


def request_ids(user: User) -> tuple[int, int]:
    try:
        return user_ids(user)
    except UserIdError as e:
        raise FilesError(500, f"error getting user ids: {e}") from None


def resolve(path: str, user: User, ctx: ExecContext, wording: str) -> str:
    """Resolved path; a bad `~name` is a 400 whose text starts with `wording`."""
    try:
        return expand_and_resolve(path, user, ctx.default_workdir)
    except PathError as e:
        raise FilesError(400, f"{wording}: {e}") from None
