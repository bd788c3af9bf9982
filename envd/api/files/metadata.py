"""`X-Metadata-*` request headers → `user.e2b.*` extended attributes, with
upstream's validation and limits."""

from __future__ import annotations

import errno
import os

from envd.fs.entry import METADATA_PREFIX
from envd.fs.errors import errno_text, go_quote

HEADER_PREFIX = b"x-metadata-"
# The VFS caps an xattr name at 255 bytes, prefix included.
MAX_KEY_LEN = 255 - len(METADATA_PREFIX)
# ext4 keeps all of an inode's xattrs in one 4 KiB block.
MAX_TOTAL_LEN = 4096

XATTR_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


def metadata_from_headers(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Keys lower-cased, first value of a repeated header wins, empty key ignored."""
    metadata: dict[str, str] = {}
    for name, value in raw_headers:
        if name[: len(HEADER_PREFIX)].lower() != HEADER_PREFIX:
            continue
        key = name[len(HEADER_PREFIX) :].decode("latin-1").lower()
        if key and key not in metadata:
            metadata[key] = value.decode("latin-1").strip(" \t")
    return metadata


def _check_printable(label: str, text: str) -> None:
    for i, byte in enumerate(text.encode("latin-1", "replace")):
        if byte < 0x20 or byte > 0x7E:
            raise ValueError(
                f"metadata {label} contains non-printable-ASCII byte 0x{byte:02x} at offset {i}"
            )


def validate_metadata(metadata: dict[str, str]) -> None:
    """Raises ValueError with upstream's detail text."""
    total = 0
    for key, value in metadata.items():
        if not key:
            raise ValueError("metadata key must not be empty")
        if len(key.encode("latin-1", "replace")) > MAX_KEY_LEN:
            raise ValueError(f"metadata key {go_quote(key)} exceeds {MAX_KEY_LEN} bytes")
        _check_printable("key", key)
        _check_printable(f"value for key {go_quote(key)}", value)
        total += len(METADATA_PREFIX) + len(key) + len(value)
    if total > MAX_TOTAL_LEN:
        raise ValueError(f"total metadata size {total} exceeds {MAX_TOTAL_LEN} bytes")


class XattrError(Exception):
    def __init__(self, op: str, path: str, name: str, exc: OSError) -> None:
        # Worded as the Go xattr package words its errors.
        super().__init__(f"xattr.{op} {path} {name}: {errno_text(exc.errno)}")
        self.errno = exc.errno


def write_metadata(fd: int, path: str, metadata: dict[str, str]) -> None:
    """Makes the file's `user.e2b.*` set exactly `metadata` (other xattrs untouched).

    Raises XattrError; callers ignore XATTR_UNSUPPORTED errors.
    """
    try:
        existing = os.listxattr(fd)
    except OSError as e:
        raise XattrError("flist", path, "", e) from e
    for name in existing:
        if name.startswith(METADATA_PREFIX) and name[len(METADATA_PREFIX) :] not in metadata:
            try:
                os.removexattr(fd, name)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise XattrError("fremove", path, name, e) from e
    for key, value in metadata.items():
        name = METADATA_PREFIX + key
        try:
            os.setxattr(fd, name, value.encode("latin-1"))
        except OSError as e:
            raise XattrError("fset", path, name, e) from e


def copy_foreign_xattrs(src: str, fd: int) -> None:
    """Best effort: xattrs outside `user.e2b.` (ACLs, capabilities, other
    tools' data) carried from a file being replaced to its successor."""
    try:
        names = os.listxattr(src)
    except OSError:
        return
    for name in names:
        if name.startswith(METADATA_PREFIX):
            continue
        try:
            os.setxattr(fd, name, os.getxattr(src, name))
        except OSError:
            continue
