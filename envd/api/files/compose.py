"""`POST /files/compose`: concatenate files server-side into a new file.

The copy stays in the kernel (`copy_file_range`, else `sendfile`); the result
is assembled in an anonymous inode (or a hidden sibling) and put in place
atomically (envd/fs/install.py); the sources are deleted only once it is. Unlike upstream, a
source that *is* the destination under another spelling (`/a/./f`, a
symlink, a hard link) is refused by device and inode instead of being
deleted after the compose.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import stat
import uuid

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from envd.api.files.errors import FilesError, storage_error
from envd.api.files.requester import (
    ensure_parent_dirs,
    exec_context,
    param_or_default_user,
    resolve,
    user_ids_of,
)
from envd.api.responses import go_json, json_error
from envd.fs import install
from envd.fs.entry import base_name
from envd.fs.errors import go_quote, link_error, path_error

# A compose request is a few paths; bound what is read before parsing.
MAX_BODY = 16 << 20
_COPY_CHUNK = 1 << 30
_KERNEL_COPY_UNSUPPORTED = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)

_GO_KIND = {
    str: "string",
    bool: "bool",
    int: "number",
    float: "number",
    list: "array",
    dict: "object",
}


async def compose(request: Request) -> Response:
    try:
        return await _compose(request)
    except FilesError as e:
        return json_error(e.status, e.message)
    except ClientDisconnect:
        # The body broke off: nobody is left to read the answer.
        return json_error(400, "invalid request body: unexpected EOF")


def _type_error(value: object, field: str, go_type: str) -> FilesError:
    kind = _GO_KIND.get(type(value), "value")
    return FilesError(
        400,
        f"invalid request body: json: cannot unmarshal {kind} into Go struct field "
        f"ComposeRequest.{field} of type {go_type}",
    )


def _decode(body: bytes) -> tuple[list[str], str, str | None]:
    """The first JSON value of the body, bound as Go's decoder binds it."""
    text = body.decode("utf-8", "replace").lstrip(" \t\r\n")
    if not text:
        raise FilesError(400, "invalid request body: EOF")
    try:
        value, _end = json.JSONDecoder().raw_decode(text)
    except RecursionError:
        # Go's decoder stops at 10 000 levels of nesting with this text.
        raise FilesError(400, "invalid request body: exceeded max depth") from None
    except json.JSONDecodeError as e:
        if e.pos >= len(text):
            raise FilesError(400, "invalid request body: unexpected EOF") from None
        char = text[e.pos]
        raise FilesError(
            400, f"invalid request body: invalid character '{char}' looking for beginning of value"
        ) from None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        kind = _GO_KIND.get(type(value), "value")
        raise FilesError(
            400,
            f"invalid request body: json: cannot unmarshal {kind} "
            "into Go value of type api.ComposeRequest",
        )
    fields: dict[str, object] = {}
    for key, item in value.items():
        # Go matches field names case-insensitively; the last duplicate wins.
        fields[key.lower()] = item
    sources = fields.get("source_paths")
    if sources is None:
        sources = []
    if not isinstance(sources, list):
        raise _type_error(sources, "source_paths", "[]string")
    for item in sources:
        if not isinstance(item, str):
            raise _type_error(item, "source_paths", "string")
    destination = fields.get("destination")
    if destination is None:
        destination = ""
    if not isinstance(destination, str):
        raise _type_error(destination, "destination", "string")
    username = fields.get("username")
    if username is not None and not isinstance(username, str):
        raise _type_error(username, "username", "string")
    return sources, destination, username


async def _read_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise FilesError(400, f"invalid request body: larger than {MAX_BODY} bytes")
    return bytes(body)


async def _compose(request: Request) -> Response:
    sources, destination, username = _decode(await _read_body(request))
    if not sources:
        raise FilesError(400, "source_paths must not be empty")
    if not destination:
        raise FilesError(400, "destination is required")
    ctx = exec_context(request)
    user = param_or_default_user(username, ctx)
    uid, gid = user_ids_of(user)
    dest = resolve(destination, user, ctx, "error resolving destination path")
    resolved = []
    for source in sources:
        path = resolve(source, user, ctx, f"error resolving source path {go_quote(source)}")
        if path == dest:
            raise FilesError(
                400, f"source path {go_quote(source)} cannot be the same as destination"
            )
        resolved.append((source, path))
    await asyncio.to_thread(_assemble, resolved, dest, uid, gid)
    body = go_json({"name": base_name(dest), "path": dest, "type": "file"}) + b"\n"
    return Response(body, 200, media_type="application/json")


def _assemble(sources: list[tuple[str, str]], dest: str, uid: int, gid: int) -> None:
    try:
        dest_st: os.stat_result | None = os.stat(dest)
    except OSError:
        dest_st = None
    for raw, path in sources:
        try:
            st = os.stat(path)
        except OSError:
            raise FilesError(404, f"source file not found: {raw}") from None
        if not stat.S_ISREG(st.st_mode):
            raise FilesError(400, f"source path is not a regular file: {raw}")
        if dest_st is not None and (st.st_dev, st.st_ino) == (dest_st.st_dev, dest_st.st_ino):
            # Upstream compares strings only, then deletes the "source": the result.
            raise FilesError(400, f"source path {go_quote(raw)} cannot be the same as destination")
    ensure_parent_dirs(dest, uid, gid)

    temp_name = f"{dest}.e2b-compose.{uuid.uuid4()}.tmp"
    temp = _create_temp(dest, temp_name)
    try:
        try:
            os.fchown(temp.fd, uid, gid)
        except OSError as e:
            raise FilesError(
                500, f"error changing file ownership: {path_error('chown', temp_name, e)}"
            ) from None
        for _raw, path in sources:
            _append(temp.fd, path, temp_name)
        _install(temp, temp_name, dest)
    except BaseException:
        install.discard(temp)
        raise
    try:
        install.close(temp)
    except OSError as e:
        raise FilesError(
            500, f"error closing destination file: {path_error('close', temp_name, e)}"
        ) from None
    for _raw, path in sources:
        with contextlib.suppress(OSError):
            os.remove(path)


def _create_temp(dest: str, temp_name: str) -> install.TempFile:
    """An anonymous inode in the destination's directory, else upstream's
    named temporary file."""
    try:
        return install.create(os.path.dirname(dest), temp_name)
    except OSError as e:
        raise storage_error(
            e.errno,
            f"error creating destination file: {path_error('open', temp_name, e)}",
            no_space="not enough disk space available",
        ) from None


def _append(fd: int, path: str, temp_name: str) -> None:
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise FilesError(
            500, f"error opening source file {path}: {path_error('open', path, e)}"
        ) from None
    try:
        _copy(src, fd)
    except OSError as e:
        raise storage_error(
            e.errno,
            f"error composing source {path}: {path_error('write', temp_name, e)}",
            no_space="not enough disk space available",
        ) from None
    finally:
        os.close(src)


def _copy(src: int, dst: int) -> None:
    """Whole of `src` appended to `dst` without passing through user space
    where the kernel allows it."""
    try:
        while os.copy_file_range(src, dst, _COPY_CHUNK):
            pass
        return
    except OSError as e:
        if e.errno not in _KERNEL_COPY_UNSUPPORTED:
            raise
    offset = os.lseek(src, 0, os.SEEK_CUR)
    try:
        while sent := os.sendfile(dst, src, offset, _COPY_CHUNK):
            offset += sent
        return
    except OSError as e:
        if e.errno not in _KERNEL_COPY_UNSUPPORTED:
            raise
    os.lseek(src, offset, os.SEEK_SET)
    while data := os.read(src, 1 << 20):
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view) :]


def _install(temp: install.TempFile, temp_name: str, dest: str) -> None:
    def fail(e: OSError) -> FilesError:
        return FilesError(
            500, f"error finalizing compose: {link_error('rename', temp_name, dest, e)}"
        )

    with contextlib.suppress(OSError):
        if stat.S_ISDIR(os.lstat(dest).st_mode):
            # Go's os.Rename refuses to replace a directory with EEXIST.
            raise fail(OSError(errno.EEXIST, "file exists"))
    try:
        # Always a rename, as upstream's named temporary file is renamed.
        install.replace(temp, dest, temp_name)
    except OSError as e:
        raise fail(e) from None
