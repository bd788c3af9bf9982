"""Handler failures of the file endpoints: HTTP status and upstream's message text.

The answers themselves are written by envd/api/responses.py (Go's JSON
error body, or plain text for query binding and the range machinery).
"""

from __future__ import annotations

import errno

from envd.fs.errors import NO_SPACE

INSUFFICIENT_STORAGE = 507


class FilesError(Exception):
    """A handler failure: HTTP status and upstream's message text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def storage_error(
    code: int | None,
    message: str,
    *,
    no_space: str,
    status: int = 500,
    quota: bool = False,
) -> FilesError:
    """`no_space` as 507 when errno `code` says the disk is full (`ENOSPC`;
    with `quota`, also `EDQUOT`, as upstream checks for metadata), else
    `message` as `status`."""
    full = NO_SPACE if quota else (errno.ENOSPC,)
    if code in full:
        return FilesError(INSUFFICIENT_STORAGE, no_space)
    return FilesError(status, message)
