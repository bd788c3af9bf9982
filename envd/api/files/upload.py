"""`POST /files`: raw (`application/octet-stream`) and multipart uploads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from envd.api import signing
from envd.api.files.encoding import GZIP, EncodingError, check_gzip_header, gunzip, request_encoding
from envd.api.files.errors import FilesError
from envd.api.files.mediatype import MediaTypeError, parse_media_type
from envd.api.files.metadata import metadata_from_headers, validate_metadata
from envd.api.files.multipart import MultipartError, MultipartStream, PartData, PartEnd, PartStart
from envd.api.files.query import FileParams
from envd.api.files.requester import (
    check_access,
    exec_context,
    param_or_default_user,
    resolve,
    user_ids_of,
)
from envd.api.files.writer import UploadFile
from envd.api.responses import go_json, json_error
from envd.execcontext import ExecContext
from envd.permissions.users import User


class _BodyError(Exception):
    """The request body failed while being consumed (gzip corruption)."""


async def upload(request: Request, params: FileParams) -> Response:
    try:
        entries = await _upload(request, params)
    except FilesError as e:
        return json_error(e.status, e.message)
    except ClientDisconnect:
        # Nobody is left to read this; upstream words it so.
        return json_error(500, "error writing file: unexpected EOF")
    return Response(go_json(entries), 200, media_type="application/json")


async def _upload(request: Request, params: FileParams) -> list[dict[str, object]]:
    check_access(request, params, signing.WRITE)
    ctx = exec_context(request)
    body: AsyncIterator[bytes] = request.stream()
    try:
        if request_encoding(request.headers.get("content-encoding")) == GZIP:
            head, rest = await check_gzip_header(body)
            body = _decoded(gunzip(head, rest))
    except EncodingError as e:
        raise FilesError(400, f"error decompressing request body: {e}") from None

    user = param_or_default_user(params.username, ctx)
    uid, gid = user_ids_of(user)
    metadata = metadata_from_headers(request.scope["headers"])
    try:
        validate_metadata(metadata)
    except ValueError as e:
        raise FilesError(400, f"invalid metadata: {e}") from None

    content_type = request.headers.get("content-type", "")
    try:
        media_type, ct_params = parse_media_type(content_type)
    except MediaTypeError as e:
        media_type, ct_params = e.media_type, None
    length = request.headers.get("content-length", "")
    content_length = int(length) if length.isascii() and length.isdigit() else None
    job = _Job(
        ctx=ctx, user=user, uid=uid, gid=gid, metadata=metadata, content_length=content_length
    )

    if media_type == "application/octet-stream":
        return [await job.raw(params, body)]
    if media_type.startswith("multipart/"):
        if media_type != "multipart/form-data" or ct_params is None:
            raise FilesError(
                500,
                "error parsing multipart form: request Content-Type isn't multipart/form-data",
            )
        boundary = ct_params.get("boundary")
        if boundary is None:
            raise FilesError(
                500, "error parsing multipart form: no multipart boundary param in Content-Type"
            )
        return await job.multipart(params, body, boundary.encode("utf-8", "surrogateescape"))
    raise FilesError(
        400,
        f"unsupported content type: {content_type}, "
        "expected multipart/form-data or application/octet-stream",
    )


async def _decoded(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for piece in body:
            yield piece
    except EncodingError as e:
        raise _BodyError(str(e)) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Job:
    """What every file of one upload request shares."""

    ctx: ExecContext
    user: User
    uid: int
    gid: int
    metadata: dict[str, str]
    content_length: int | None

    async def _open(self, path: str) -> UploadFile:
        return await UploadFile.open(path, self.uid, self.gid, self.metadata, self.content_length)

    async def raw(self, params: FileParams, body: AsyncIterator[bytes]) -> dict[str, object]:
        if params.path is None:
            raise FilesError(400, "path query parameter is required for raw body upload")
        path = resolve(params.path, self.user, self.ctx, "error resolving path")
        file = await self._open(path)
        try:
            async for chunk in body:
                await file.write(chunk)
            return await file.commit()
        except _BodyError as e:
            raise FilesError(500, f"error writing file: {e}") from None
        finally:
            await file.abort()

    async def multipart(
        self, params: FileParams, body: AsyncIterator[bytes], boundary: bytes
    ) -> list[dict[str, object]]:
        try:
            stream = MultipartStream(boundary)
        except Exception as e:  # python-multipart refuses some boundaries outright
            raise FilesError(500, f"error reading form: multipart: {e}") from None
        entries: list[dict[str, object]] = []
        current: UploadFile | None = None
        try:
            async for chunk in body:
                for event in stream.feed(chunk):
                    current = await self._on_event(event, current, params, entries)
            for event in stream.finish():
                current = await self._on_event(event, current, params, entries)
        except MultipartError as e:
            if e.in_part and current is not None:
                raise FilesError(500, f"error writing file: {e}") from None
            raise FilesError(500, f"error reading form: {e}") from None
        except _BodyError as e:
            if current is not None:
                raise FilesError(500, f"error writing file: {e}") from None
            raise FilesError(500, f"error reading form: {e}") from None
        finally:
            if current is not None:
                await current.abort()
        return entries

    async def _on_event(
        self,
        event: PartStart | PartData | PartEnd,
        current: UploadFile | None,
        params: FileParams,
        entries: list[dict[str, object]],
    ) -> UploadFile | None:
        if isinstance(event, PartData):
            if current is not None:
                await current.write(event.data)
            return current
        if isinstance(event, PartEnd):
            if current is not None:
                entries.append(await current.commit())
            return None
        path = self._file_part_path(event, params, entries)
        return None if path is None else await self._open(path)

    def _file_part_path(
        self, part: PartStart, params: FileParams, entries: list[dict[str, object]]
    ) -> str | None:
        """Destination of a part named `file`; None for any other part (skipped)."""
        try:
            disposition, dparams = parse_media_type(part.get("content-disposition") or "")
        except MediaTypeError:
            return None
        if disposition != "form-data" or dparams.get("name") != "file":
            return None
        if params.path is not None:
            wanted = params.path
        else:
            filename = dparams.get("filename")
            if filename is None:
                raise FilesError(
                    400,
                    "error getting multipart custom part file name: "
                    "filename not found in Content-Disposition header",
                )
            wanted = filename  # a full path, not reduced to its last element
        path = resolve(wanted, self.user, self.ctx, "error resolving path")
        if any(entry["path"] == path for entry in entries):
            message = (
                f"you cannot upload multiple files to the same path '{path}' in one upload "
                "request, only the first specified file was uploaded"
            )
            others = [str(e["path"]) for e in entries if e["path"] != path]
            if len(others) > 1:
                message += f", also the following files were uploaded: {', '.join(others)}"
            raise FilesError(400, message)
        return path
