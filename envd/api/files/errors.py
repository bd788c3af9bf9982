"""Handler failures of the file endpoints: HTTP status and upstream's message text.

The answers themselves are written by envd/api/responses.py (Go's JSON
error body, or plain text for query binding and the range machinery).
"""

from __future__ import annotations


class FilesError(Exception):
    """A handler failure: HTTP status and upstream's message text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
