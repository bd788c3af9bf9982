"""Writing one uploaded file (spec files-http §3.7) in place, as upstream does.

Upstream chowns an existing target, opens it `O_CREAT|O_TRUNC`, chowns a new
one through the fd and writes: a watcher sees `CREATE, CHMOD, WRITE` for a new
file and `CHMOD, WRITE` for an overwrite, and SDK code counts on exactly
that. An anonymous inode linked or renamed into place would be atomic but
shows other events (docs/compatibility.md), so the wire contract wins. One
difference is kept: a *new* file whose upload fails is removed again (its
`DELETE` follows), so a failed upload of a new file leaves nothing behind.

Blocking calls run in a worker thread; data is written in ~1 MiB batches
while the next batch is being received.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from dataclasses import dataclass

from envd.api.files.errors import FilesError, storage_error
from envd.api.files.metadata import XATTR_UNSUPPORTED, XattrError, write_metadata
from envd.api.files.requester import ensure_parent_dirs
from envd.fs.entry import base_name, read_metadata
from envd.fs.errors import path_error

FLUSH_BYTES = 1 << 20
_IOV_MAX = 1024


@dataclass(slots=True)
class _Target:
    path: str
    fd: int
    # (st_dev, st_ino) of a file this upload created, None for an existing one.
    created: tuple[int, int] | None
    written: int = 0


class UploadFile:
    """One file of an upload: `open`, then `write` repeatedly, then `commit` or `abort`."""

    def __init__(
        self, target: _Target, metadata: dict[str, str], content_length: int | None
    ) -> None:
        self._t = target
        self._metadata = metadata
        self._content_length = content_length
        self._pending: list[bytes | memoryview] = []
        self._pending_size = 0
        self._flushing: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def path(self) -> str:
        return self._t.path

    @classmethod
    async def open(
        cls,
        path: str,
        uid: int,
        gid: int,
        metadata: dict[str, str],
        content_length: int | None,
    ) -> UploadFile:
        target = await asyncio.to_thread(_prepare, path, uid, gid)
        return cls(target, metadata, content_length)

    async def write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= FLUSH_BYTES or len(self._pending) >= _IOV_MAX:
            await self._flush()

    async def _flush(self, last: bool = False) -> None:
        # One batch in flight while the next one is being received.
        await self._wait_flushing()
        if self._pending:
            buffers, self._pending, self._pending_size = self._pending, [], 0
            loop = asyncio.get_running_loop()
            self._flushing = loop.run_in_executor(None, self._write_all, buffers)
        if last:
            await self._wait_flushing()

    async def _wait_flushing(self) -> None:
        # Shielded: a cancelled request must not forget a write still running
        # in its thread, or `abort` would close the fd under it.
        future = self._flushing
        if future is None:
            return
        try:
            await asyncio.shield(future)
        finally:
            if future.done():
                self._flushing = None

    def _write_all(self, buffers: list[bytes | memoryview]) -> None:
        t = self._t
        views = [memoryview(b) for b in buffers]
        try:
            while views:
                n = os.writev(t.fd, views)
                t.written += n
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                if n:
                    views[0] = views[0][n:]
        except OSError as e:
            no_space = "not enough disk space available"
            if self._content_length:
                no_space = f"attempted to write {self._content_length} bytes: {no_space}"
            raise storage_error(
                e.errno, f"error writing file: {path_error('write', t.path, e)}", no_space=no_space
            ) from None

    async def commit(self) -> dict[str, object]:
        """Finishes the file and returns its entry for the response."""
        try:
            await self._flush(last=True)
            entry = await asyncio.to_thread(_commit, self._t, self._metadata)
        except BaseException:
            await self.abort()
            raise
        self._closed = True
        return entry

    async def abort(self) -> None:
        """Gives up: a file this upload created is removed; an existing one
        keeps what was written so far, as upstream's does."""
        if self._closed:
            return
        self._closed = True
        flushing, self._flushing = self._flushing, None
        if flushing is not None and not flushing.done():
            # Never close the fd under a write still running in its thread.
            flushing.add_done_callback(lambda _f: _discard(self._t))
            return
        await asyncio.shield(asyncio.to_thread(_discard, self._t))


def _prepare(path: str, uid: int, gid: int) -> _Target:
    """Upstream's steps: parents, stat, chown of an existing file, open, fchown."""
    ensure_parent_dirs(path, uid, gid)
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise FilesError(500, f"error getting file info: {path_error('stat', path, e)}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise FilesError(400, f"path is a directory: {path}")
    chowned = False
    if st is not None:
        try:
            os.chown(path, uid, gid)
            chowned = True
        except FileNotFoundError:
            pass
        except OSError as e:
            raise FilesError(
                500, f"error changing file ownership: {path_error('chown', path, e)}"
            ) from None
    fd, created = _open(path, exclusive=st is None)
    if not chowned:
        try:
            os.fchown(fd, uid, gid)
        except OSError as e:
            t = _Target(path, fd, created)
            _discard(t)
            raise FilesError(
                500, f"error changing file ownership: {path_error('chown', path, e)}"
            ) from None
    return _Target(path, fd, created)


def _open(path: str, exclusive: bool) -> tuple[int, tuple[int, int] | None]:
    """The target opened for writing, truncated; with the identity of the
    file if this call created it. `O_EXCL` (no visible difference) tells a
    file we created from one that appeared meanwhile."""
    # Non-blocking open: a FIFO without a reader fails (ENXIO) instead of
    # pinning a worker thread until one appears; writes then block as usual.
    flags = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        # An existing file is opened without O_CREAT, so that one removed
        # between our stat and this open is created exclusively, and known to
        # be ours, rather than silently re-created and taken for the old one.
        for _ in range(3):
            if exclusive:
                try:
                    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
                except FileExistsError:
                    exclusive = False
                else:
                    os.set_blocking(fd, True)
                    st = os.fstat(fd)
                    return fd, (st.st_dev, st.st_ino)
            try:
                fd = os.open(path, flags)
            except FileNotFoundError:
                exclusive = True
                continue
            os.set_blocking(fd, True)
            return fd, None
        fd = os.open(path, flags | os.O_CREAT, 0o666)  # it keeps coming and going
        os.set_blocking(fd, True)
    except OSError as e:
        raise storage_error(
            e.errno,
            f"error opening file: {path_error('open', path, e)}",
            no_space=f"not enough inodes available: {path_error('open', path, e)}",
        ) from None
    return fd, None


def _persist_metadata(t: _Target, metadata: dict[str, str]) -> None:
    try:
        write_metadata(t.fd, t.path, metadata)
    except XattrError as e:
        if e.errno in XATTR_UNSUPPORTED:
            return  # e.g. /proc, /sys: the content is written, metadata cannot be
        raise storage_error(
            e.errno,
            f"error writing file metadata: {e}",
            no_space=f"not enough space for file metadata: {e}",
            quota=True,
        ) from None


def _commit(t: _Target, metadata: dict[str, str]) -> dict[str, object]:
    _persist_metadata(t, metadata)
    fd, t.fd = t.fd, -1
    try:
        os.close(fd)
    except OSError as e:
        raise FilesError(500, f"error writing file: {path_error('close', t.path, e)}") from None
    t.created = None  # complete: it stays
    entry: dict[str, object] = {}
    persisted = read_metadata(t.path)
    if persisted:
        entry["metadata"] = dict(sorted(persisted.items()))
    entry.update(name=base_name(t.path), path=t.path, type="file")
    return entry


def _discard(t: _Target) -> None:
    if t.fd >= 0:
        with contextlib.suppress(OSError):
            os.close(t.fd)
        t.fd = -1
    if t.created is not None:
        # Only the file we created, not one that replaced it meanwhile.
        with contextlib.suppress(OSError):
            st = os.lstat(t.path)
            if (st.st_dev, st.st_ino) == t.created:
                os.unlink(t.path)
        t.created = None
