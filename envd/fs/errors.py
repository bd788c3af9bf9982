"""Operating-system errors worded as Go's `os` and `syscall` packages word them.

Upstream's messages embed Go's `*PathError` texts (`lstat /x: no such file or
directory`); clients show them to users, so we rebuild them from errno.
"""

from __future__ import annotations

import errno as _errno
import os

# Out of blocks or inodes (EDQUOT: out of the user's quota); the HTTP surface
# answers these 507 Insufficient Storage.
NO_SPACE = (_errno.ENOSPC, _errno.EDQUOT)


def errno_text(errno: int | None) -> str:
    """glibc's strerror with the first letter lower-cased, as Go's syscall table has it."""
    if errno is None:
        return "unknown error"
    text = os.strerror(errno)
    return text[:1].lower() + text[1:]


def path_error(op: str, path: str, exc: OSError) -> str:
    """`<op> <path>: <errno text>` (Go's `*PathError`)."""
    return f"{op} {path}: {errno_text(exc.errno)}"


def link_error(op: str, old: str, new: str, exc: OSError) -> str:
    """`<op> <old> <new>: <errno text>` (Go's `*LinkError`)."""
    return f"{op} {old} {new}: {errno_text(exc.errno)}"


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_GO_ESCAPES["\v"] = "\\v"


def go_quote(text: str) -> str:
    """Go's `%q`: double quotes, backslash escapes, printable non-ASCII kept.

    Bytes that were not valid UTF-8 arrive as surrogate escapes and come out
    as `\\xNN`, as Go prints invalid bytes.
    """
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)
