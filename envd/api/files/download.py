"""`GET /files`: a file's content, identity (with ranges and conditionals) or gzip."""

from __future__ import annotations

import asyncio
import os
import stat

from starlette.requests import Request
from starlette.responses import Response

from envd.api import signing
from envd.api.files.content_type import SNIFF_LEN, detect_content_type, type_by_extension
from envd.api.files.encoding import GZIP, EncodingError, identity_acceptable, negotiate
from envd.api.files.errors import FilesError
from envd.api.files.query import FileParams
from envd.api.files.requester import check_access, exec_context, param_or_default_user, resolve
from envd.api.files.serve import (
    Outcome,
    RangeError,
    Segment,
    check_preconditions,
    format_http_date,
    multipart_byteranges,
    parse_range,
)
from envd.api.files.stream import FileBody
from envd.api.responses import json_error, text_error
from envd.asgi import ASGIApp
from envd.fs.entry import base_name
from envd.fs.errors import path_error

# Go's mime.FormatMediaType: tspecials never appear bare in a token.
_TSPECIALS = frozenset(b'()<>@,;:\\"/[]?=')
_PCT_UNSAFE = frozenset(b"*'%()<>@,;:\\\"/[]?=")


def content_disposition(name: str) -> str:
    """`inline; filename=...` quoted exactly as Go's `mime.FormatMediaType`."""
    raw = name.encode("utf-8", "surrogateescape")
    if any((b < 0x20 and b != 0x09) or b > 0x7E for b in raw):
        encoded = "".join(
            f"%{b:02X}" if b <= 0x20 or b >= 0x7F or b in _PCT_UNSAFE else chr(b) for b in raw
        )
        return f"inline; filename*=utf-8''{encoded}"
    if raw and all(0x20 < b < 0x7F and b not in _TSPECIALS for b in raw):
        return f"inline; filename={name}"
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'inline; filename="{quoted}"'


def _open(path: str, st_mode: int) -> int:
    # A FIFO would block open() until a writer appears and hold a worker
    # thread forever: open it non-blocking, then read it blocking.
    flags = os.O_RDONLY | os.O_CLOEXEC
    if not stat.S_ISREG(st_mode):
        flags |= os.O_NONBLOCK
    fd = os.open(path, flags)
    if flags & os.O_NONBLOCK:
        os.set_blocking(fd, True)
    return fd


async def download(request: Request, params: FileParams) -> Response | ASGIApp:
    try:
        return await _download(request, params)
    except FilesError as e:
        return json_error(e.status, e.message)


async def _download(request: Request, params: FileParams) -> Response | ASGIApp:
    path = params.path or ""
    check_access(request, params, signing.READ)
    ctx = exec_context(request)
    user = param_or_default_user(params.username, ctx)
    resolved = resolve(path, user, ctx, f"error expanding and resolving path '{path}'")
    try:
        st = await asyncio.to_thread(os.stat, resolved)
    except FileNotFoundError:
        raise FilesError(404, f"path '{resolved}' does not exist") from None
    except OSError as e:
        message = f"error checking if path exists '{resolved}': {path_error('stat', resolved, e)}"
        raise FilesError(500, message) from None
    if stat.S_ISDIR(st.st_mode):
        raise FilesError(400, f"path '{resolved}' is a directory")

    accept = request.headers.get("accept-encoding")
    try:
        encoding = negotiate(accept)
    except EncodingError as e:
        raise FilesError(406, f"error parsing Accept-Encoding: {e}") from None
    headers = {"Vary": "Accept-Encoding"}
    conditional = any(
        request.headers.get(h) for h in ("range", "if-modified-since", "if-none-match", "if-range")
    )
    if conditional:
        if not identity_acceptable(accept):
            return json_error(
                406, "identity encoding not acceptable for Range or conditional request", headers
            )
        encoding = "identity"

    try:
        fd = await asyncio.to_thread(_open, resolved, st.st_mode)
    except OSError as e:
        message = f"error opening file '{resolved}': {path_error('open', resolved, e)}"
        return json_error(500, message, headers)
    try:
        headers["Content-Disposition"] = content_disposition(base_name(resolved))
        if encoding == GZIP:
            headers["Content-Encoding"] = "gzip"
            headers["Content-Type"] = type_by_extension(path) or "application/octet-stream"
            return FileBody(fd, 200, list(headers.items()), gzip=True)
        answer = await _serve_content(request, fd, path, st, headers)
    except BaseException:
        os.close(fd)
        raise
    if not isinstance(answer, FileBody):
        os.close(fd)
    return answer


def _sniff_and_size(fd: int, want_sniff: bool) -> tuple[bytes, int | None]:
    head = b""
    if want_sniff:
        while len(head) < SNIFF_LEN:
            more = os.read(fd, SNIFF_LEN - len(head))
            if not more:
                break
            head += more
    try:
        if want_sniff:
            os.lseek(fd, 0, os.SEEK_SET)
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        return head, None
    return head, size


async def _serve_content(
    request: Request, fd: int, path: str, st: os.stat_result, headers: dict[str, str]
) -> Response | FileBody:
    """Go's `http.ServeContent` for a file without ETag."""
    mtime = st.st_mtime_ns // 1_000_000_000 or None  # the Unix epoch counts as "no time"
    if mtime is not None:
        headers["Last-Modified"] = format_http_date(mtime)
    outcome, range_header = check_preconditions(request.headers.get, mtime)
    if outcome is Outcome.NOT_MODIFIED:
        return Response(status_code=304, headers=headers)
    if outcome is Outcome.PRECONDITION_FAILED:
        return Response(b"", 412, headers=headers)

    content_type = type_by_extension(path)
    try:
        head, size = await asyncio.to_thread(_sniff_and_size, fd, not content_type)
    except OSError as e:
        # /proc/self/mem and the like: open works, read does not.
        return json_error(500, f"error reading file: {path_error('read', path, e)}", headers)
    if size is None:
        return text_error(500, "seeker can't seek", headers)
    content_type = content_type or detect_content_type(head)
    headers["Content-Type"] = content_type

    try:
        ranges = parse_range(range_header, size)
    except RangeError as e:
        if not (e.no_overlap and size == 0):
            # Go drops validators from error answers.
            headers.pop("Last-Modified", None)
            if e.no_overlap:
                headers["Content-Range"] = f"bytes */{size}"
            return text_error(416, str(e), headers)
        ranges = []
    if sum(r.length for r in ranges) > size:
        ranges = []  # more bytes asked for than the file has: serve it whole

    status = 200
    segments = [Segment(offset=0, length=size)]
    length = size
    if len(ranges) == 1:
        status = 206
        segments = [Segment(offset=ranges[0].start, length=ranges[0].length)]
        length = ranges[0].length
        headers["Content-Range"] = ranges[0].content_range(size)
    elif len(ranges) > 1:
        status = 206
        boundary, segments, length = multipart_byteranges(ranges, content_type, size)
        headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    headers["Accept-Ranges"] = "bytes"
    headers["Content-Length"] = str(length)
    return FileBody(fd, status, list(headers.items()), segments)
