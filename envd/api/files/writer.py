"""Writing one uploaded file (spec files-http §3.7), without ever exposing a
partial file under the target name.

Upstream truncates the target and writes in place, so an interrupted,
malformed or out-of-space upload leaves a truncated file behind. We write an
anonymous `O_TMPFILE` inode (or, where the filesystem lacks it, a hidden
sibling) in the target's directory and link or rename it into place only
once the body is complete; an existing file's mode and non-`user.e2b.`
xattrs are carried over and, as upstream does, the result is owned by the
requesting user. Targets that cannot be replaced that way (devices, FIFOs,
`/proc` and `/sys` knobs) are written in place exactly as upstream does.

Blocking calls run in a worker thread; data is written in ~1 MiB batches
while the next batch is being received.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import stat
from dataclasses import dataclass
from enum import Enum

from envd.api.files.errors import FilesError
from envd.api.files.metadata import (
    XATTR_UNSUPPORTED,
    XattrError,
    copy_foreign_xattrs,
    write_metadata,
)
from envd.api.files.requester import ensure_parent_dirs
from envd.fs.entry import base_name, read_metadata
from envd.fs.errors import path_error

FLUSH_BYTES = 1 << 20
_IOV_MAX = 1024
# Errors that mean "this directory cannot hold an anonymous inode" rather
# than "this directory cannot hold a file".
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT, errno.EXDEV)


class Mode(Enum):
    TMPFILE = "tmpfile"  # anonymous inode, linked in at the end
    NAMED = "named"  # hidden sibling, renamed in at the end
    IN_PLACE = "in-place"  # upstream's way: truncate and write the target itself


@dataclass(slots=True)
class _Target:
    path: str  # the resolved path, as reported
    final: str  # where the content ends up (a symlink at `path` is followed)
    fd: int
    mode: Mode
    replaces: bool  # a regular file exists at `final`
    temp_name: str | None = None
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
            if e.errno == errno.ENOSPC:
                message = "not enough disk space available"
                if self._content_length:
                    message = f"attempted to write {self._content_length} bytes: {message}"
                raise FilesError(507, message) from None
            raise FilesError(500, f"error writing file: {path_error('write', t.path, e)}") from e

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
        """Drops the new content (the target keeps its previous content, except
        in place, where upstream's partial write stays)."""
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
    """Upstream's steps 1-5: parents, stat, ownership; then the temporary inode."""
    ensure_parent_dirs(path, uid, gid)
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise FilesError(500, f"error getting file info: {path_error('stat', path, e)}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise FilesError(400, f"path is a directory: {path}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        return _open_in_place(path, uid, gid, exists=True)

    final = os.path.realpath(path) if os.path.islink(path) else path
    try:
        target = _open_temporary(path, final, replaces=st is not None)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise FilesError(
                507, f"not enough inodes available: {path_error('open', path, e)}"
            ) from None
        if st is not None:
            # The directory refuses new files (/proc, /sys): write in place.
            return _open_in_place(path, uid, gid, exists=True)
        raise FilesError(500, f"error opening file: {path_error('open', path, e)}") from None
    try:
        if st is not None:
            # The successor looks like the file it replaces (upstream keeps the inode).
            copy_foreign_xattrs(final, target.fd)
            os.fchmod(target.fd, stat.S_IMODE(st.st_mode))
        os.fchown(target.fd, uid, gid)
    except OSError as e:
        _discard(target)
        raise FilesError(
            500, f"error changing file ownership: {path_error('chown', path, e)}"
        ) from None
    return target


def _open_temporary(path: str, final: str, replaces: bool) -> _Target:
    directory = os.path.dirname(final) or "/"
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno not in _NO_TMPFILE:
            raise
    else:
        return _Target(path, final, fd, Mode.TMPFILE, replaces)
    temp_name = os.path.join(directory, f".{secrets.token_hex(8)}.e2b-upload.tmp")
    fd = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    return _Target(path, final, fd, Mode.NAMED, replaces, temp_name)


def _open_in_place(path: str, uid: int, gid: int, exists: bool) -> _Target:
    chowned = False
    if exists:
        try:
            os.chown(path, uid, gid)
            chowned = True
        except FileNotFoundError:
            pass
        except OSError as e:
            raise FilesError(
                500, f"error changing file ownership: {path_error('chown', path, e)}"
            ) from None
    try:
        # Non-blocking open: a FIFO without a reader fails (ENXIO) instead of
        # pinning a worker thread until one appears; writes then block as usual.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(path, flags, 0o666)
        os.set_blocking(fd, True)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise FilesError(
                507, f"not enough inodes available: {path_error('open', path, e)}"
            ) from None
        raise FilesError(500, f"error opening file: {path_error('open', path, e)}") from None
    if not chowned:
        try:
            os.fchown(fd, uid, gid)
        except OSError as e:
            os.close(fd)
            raise FilesError(
                500, f"error changing file ownership: {path_error('chown', path, e)}"
            ) from None
    return _Target(path, path, fd, Mode.IN_PLACE, exists)


def _persist_metadata(t: _Target, metadata: dict[str, str]) -> None:
    try:
        write_metadata(t.fd, t.path, metadata)
    except XattrError as e:
        if e.errno in XATTR_UNSUPPORTED:
            return  # e.g. /proc, /sys: the content is written, metadata cannot be
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FilesError(507, f"not enough space for file metadata: {e}") from None
        raise FilesError(500, f"error writing file metadata: {e}") from None


def _commit(t: _Target, metadata: dict[str, str]) -> dict[str, object]:
    _persist_metadata(t, metadata)
    if t.mode is not Mode.IN_PLACE:
        _install(t)
    fd, t.fd = t.fd, -1
    try:
        os.close(fd)
    except OSError as e:
        raise FilesError(500, f"error writing file: {path_error('close', t.path, e)}") from None
    entry: dict[str, object] = {}
    persisted = read_metadata(t.path)
    if persisted:
        entry["metadata"] = dict(sorted(persisted.items()))
    entry.update(name=base_name(t.path), path=t.path, type="file")
    return entry


def _install(t: _Target) -> None:
    """Puts the finished inode at `final` atomically."""
    if t.mode is Mode.TMPFILE:
        proc_link = f"/proc/self/fd/{t.fd}"
        if not t.replaces:
            try:
                # linkat(AT_SYMLINK_FOLLOW) through /proc: a new file appears complete.
                _link_fd(proc_link, t.final)
            except FileExistsError:
                pass  # created meanwhile: replace it like an existing file
            except OSError as e:
                raise _install_error(t, e) from None
            else:
                _announce_write(t)
                return
        t.temp_name = os.path.join(
            os.path.dirname(t.final) or "/", f".{secrets.token_hex(8)}.e2b-upload.tmp"
        )
        try:
            _link_fd(proc_link, t.temp_name)
        except OSError as e:
            t.temp_name = None
            raise _install_error(t, e) from None
    assert t.temp_name is not None
    try:
        os.rename(t.temp_name, t.final)
    except OSError as e:
        raise _install_error(t, e) from None
    t.temp_name = None
    _announce_write(t)


def _link_fd(proc_link: str, dest: str) -> None:
    # A directory fd makes Python call linkat(..., AT_SYMLINK_FOLLOW); the
    # absolute source path ignores it.
    dir_fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(proc_link, dest, src_dir_fd=dir_fd, follow_symlinks=True)
    finally:
        os.close(dir_fd)


def _install_error(t: _Target, e: OSError) -> FilesError:
    if e.errno == errno.ENOSPC:
        return FilesError(507, f"not enough inodes available: {path_error('open', t.path, e)}")
    return FilesError(500, f"error writing file: {path_error('rename', t.path, e)}")


def _announce_write(t: _Target) -> None:
    """Watchers of the directory expect a WRITE of the target name (SDK tests
    wait for it), but the content was written under another name: a
    same-size truncate through the target's name raises IN_MODIFY on it."""
    try:
        fd = os.open(t.final, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        ours = os.fstat(t.fd)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
            os.ftruncate(fd, st.st_size)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(t: _Target) -> None:
    if t.fd >= 0:
        with contextlib.suppress(OSError):
            os.close(t.fd)
        t.fd = -1
    if t.temp_name is not None:
        with contextlib.suppress(OSError):
            os.unlink(t.temp_name)
        t.temp_name = None
