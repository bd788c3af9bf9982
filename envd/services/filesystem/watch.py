"""Directory watchers: inotify on the event loop, events derived as upstream does.

One inotify instance per watcher, read with `loop.add_reader` (no thread per
watcher). Raw records are turned into `FilesystemEvent`s in batches by a worker
thread, one batch at a time per watcher, because that step stats files
(`include_entry`) and walks and watches new subdirectories.

Memory is bounded end to end: raw bytes waiting for processing are capped
(past the cap we stop reading and let the kernel queue fill, which ends in
IN_Q_OVERFLOW, reported like upstream), and sinks are bounded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import stat
import threading
from collections.abc import Awaitable, Callable

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.fs import dirs
from envd.fs.entry import IdNames, entry_info
from envd.fs.errors import errno_text, go_quote, path_error
from envd.gen.filesystem import filesystem_pb2
from envd.services.filesystem import inotify

FilesystemEvent = filesystem_pb2.FilesystemEvent

CREATE = filesystem_pb2.EVENT_TYPE_CREATE
WRITE = filesystem_pb2.EVENT_TYPE_WRITE
REMOVE = filesystem_pb2.EVENT_TYPE_REMOVE
RENAME = filesystem_pb2.EVENT_TYPE_RENAME
CHMOD = filesystem_pb2.EVENT_TYPE_CHMOD

# One kernel record can carry several operations; upstream emits them in this order.
_OPS = (
    (inotify.IN_CREATE | inotify.IN_MOVED_TO, CREATE),
    (inotify.IN_MOVED_FROM | inotify.IN_MOVE_SELF, RENAME),
    (inotify.IN_ATTRIB, CHMOD),
    (inotify.IN_MODIFY, WRITE),
    (inotify.IN_DELETE | inotify.IN_DELETE_SELF, REMOVE),
)
_WITH_ENTRY = {CREATE, WRITE, CHMOD}
# Races with a directory that vanished or was replaced before we watched it.
_GONE = {errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP}

READ_SIZE = 256 * 1024
# Raw inotify bytes buffered on our side before we stop reading (≈ 20 000 records).
PENDING_LIMIT = 1024 * 1024
OVERFLOW_MESSAGE = "watcher error: fsnotify: queue or buffer overflow"

EventSink = Callable[[list[FilesystemEvent]], Awaitable[None]]
ErrorSink = Callable[[str], None]


def _sorted_entries(path: str) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: os.fsencode(e.name))


def open_watch(
    path: str, recursive: bool, allow_network_mounts: bool
) -> tuple[int, dict[int, str]]:
    """Validate `path` and arm the watch (spec §7.2). Blocking; returns (fd, wd → rel dir).

    Raises `ConnectError` with upstream's codes and messages.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise ConnectError(
            Code.NOT_FOUND, f"path {path} not found: {path_error('stat', path, e)}"
        ) from e
    except OSError as e:
        raise ConnectError(
            Code.INTERNAL, f"error statting path {path}: {path_error('stat', path, e)}"
        ) from e
    if not stat.S_ISDIR(st.st_mode):
        # The suffix is a formatting artefact of upstream's message, kept verbatim.
        raise ConnectError(Code.INVALID_ARGUMENT, f"path {path} not a directory: %!w(<nil>)")
    if not allow_network_mounts:
        try:
            fs_type = inotify.statfs_type(path)
        except OSError as e:
            raise ConnectError(
                Code.INTERNAL,
                f"error checking mount status: failed to statfs {path}: {errno_text(e.errno)}",
            ) from e
        if fs_type in inotify.NETWORK_FS_MAGIC:
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"cannot watch path on network filesystem: {path}"
            )
    try:
        fd = inotify.inotify_init()
    except OSError as e:
        raise ConnectError(Code.INTERNAL, f"error creating watcher: {errno_text(e.errno)}") from e
    try:
        return fd, _add_root(fd, path, recursive)
    except BaseException:
        os.close(fd)
        raise


def _add_root(fd: int, path: str, recursive: bool) -> dict[int, str]:
    def failed(text: str) -> ConnectError:
        return ConnectError(Code.INTERNAL, f"error adding path {path} to watcher: {text}")

    if not recursive:
        try:
            return {inotify.add_watch(fd, path, inotify.WATCH_MASK): ""}
        except OSError as e:
            raise failed(errno_text(e.errno)) from e
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            # Upstream walks the tree without following links, starting at the root.
            raise failed(f"fsnotify: not a directory: {go_quote(path)}")
    except OSError as e:
        raise failed(path_error("lstat", path, e)) from e
    wds: dict[int, str] = {}
    try:
        wds[inotify.add_watch(fd, path, inotify.WATCH_MASK)] = ""
    except OSError as e:
        raise failed(errno_text(e.errno)) from e
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(path, rel) if rel else path
        try:
            entries = _sorted_entries(full)
        except OSError as e:
            if e.errno in _GONE:
                continue  # vanished or unreadable meanwhile: nothing left to watch there
            raise failed(path_error("open", full, e)) from e
        subdirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not is_dir:
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                wd = inotify.add_watch(fd, entry.path, _SUB_MASK)
            except OSError as e:
                if e.errno in _GONE:
                    continue
                raise failed(errno_text(e.errno)) from e
            wds[wd] = child
            subdirs.append(child)
        stack.extend(reversed(subdirs))
    return wds


# Subdirectories found by walking are never reached through a link.
_SUB_MASK = inotify.WATCH_MASK | inotify.IN_ONLYDIR | inotify.IN_DONT_FOLLOW


class FatalWatchError(Exception):
    pass


class Watcher:
    """An armed watch delivering batches of events to `sink` until closed.

    `sink` may await (a stream applying backpressure); `on_error` is called
    once with the message of a fatal error, after which the watcher is closed.
    """

    def __init__(
        self,
        fd: int,
        wds: dict[int, str],
        root: str,
        *,
        recursive: bool,
        include_entry: bool,
        sink: EventSink,
        on_error: ErrorSink,
    ) -> None:
        self.fd = fd
        self.root = root
        self.recursive = recursive
        self.include_entry = include_entry
        self._sink = sink
        self._on_error = on_error
        self._wds = wds  # wd → directory relative to root ("" = root)
        self._dirs = {rel: wd for wd, rel in wds.items()}
        self._root_wd = self._dirs.get("")
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._reading = False
        self._wakeup = asyncio.Event()
        self._read_error: str | None = None
        # `_busy`/`_closed` decide who closes the fd: a batch still running in
        # a worker thread must never see the number reused by another open().
        self._lock = threading.Lock()
        # Held while a new subdirectory is watched and walked, and while a
        # directory announced by ensure_dirs is watched: never both at once.
        self._tree_lock = threading.Lock()
        # Watches added for directories announced by ensure_dirs (any thread),
        # wd → rel, adopted by the batch that first meets them.
        self._early: dict[int, str] = {}
        # Directories moved away in the previous batch whose MOVED_TO may open the
        # next one: the kernel queues the pair one after the other, but a read
        # can fall between them.
        self._unpaired_moves: dict[int, str] = {}
        self._listening = False
        self._busy = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        recursive: bool,
        include_entry: bool,
        allow_network_mounts: bool,
        sink: EventSink,
        on_error: ErrorSink,
    ) -> Watcher:
        fd, wds = await asyncio.to_thread(open_watch, path, recursive, allow_network_mounts)
        watcher = cls(
            fd,
            wds,
            path,
            recursive=recursive,
            include_entry=include_entry,
            sink=sink,
            on_error=on_error,
        )
        if recursive:
            dirs.add_dir_listener(watcher._on_dir_created)
            watcher._listening = True
        watcher._start_reading()
        watcher._task = asyncio.create_task(watcher._run())
        return watcher

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def idle(self) -> bool:
        """Nothing read but not yet turned into events, and nothing left to read."""
        if self._busy or self._pending or self._wakeup.is_set():
            return False
        if self._closed or not self._reading:
            return True
        return not select.select([self.fd], [], [], 0)[0]

    def hold(self) -> None:
        """Stop reading (a live upgrade re-arms the watch in the next daemon)."""
        self._stop_reading()

    def release(self) -> None:
        if not self._closed:
            self._start_reading()

    def close(self) -> None:
        """Stop reading and release the inotify instance (at once, or when a running batch ends)."""
        if self._closed:
            return
        if self._listening:
            dirs.remove_dir_listener(self._on_dir_created)
            self._listening = False
        self._stop_reading()
        with self._lock:
            self._closed = True
            if not self._busy:
                os.close(self.fd)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    # -- reading (event loop) --

    def _start_reading(self) -> None:
        if not self._reading:
            self._loop.add_reader(self.fd, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.fd)
            self._reading = False

    def _on_readable(self) -> None:
        while self._pending_bytes < PENDING_LIMIT:
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                self._read_error = f"watcher error: {errno_text(e.errno)}"
                self._stop_reading()
                break
            if not chunk:
                break
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
        else:
            # Backpressure: let the kernel queue absorb the rest (it overflows
            # with IN_Q_OVERFLOW if the consumer never catches up).
            self._stop_reading()
        self._wakeup.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                data = b"".join(self._pending)
                self._pending.clear()
                self._pending_bytes = 0
                if self._read_error is not None:
                    self._fail(self._read_error)
                    return
                if not self._closed:
                    self._start_reading()
                if not data:
                    continue
                with self._lock:
                    if self._closed:
                        return
                    self._busy = True
                events, error = await self._loop.run_in_executor(None, self._process_guarded, data)
                if events:
                    await self._sink(events)
                if error is not None:
                    self._fail(error)
                    return
        except asyncio.CancelledError:
            pass

    def _fail(self, message: str) -> None:
        self.close()
        self._on_error(message)

    # -- deriving events (worker thread, one batch at a time) --

    def _process_guarded(self, data: bytes) -> tuple[list[FilesystemEvent], str | None]:
        try:
            return self._process(data), None
        except FatalWatchError as e:
            return [], str(e)
        finally:
            with self._lock:
                self._busy = False
                if self._closed:
                    os.close(self.fd)

    def _process(self, data: bytes) -> list[FilesystemEvent]:
        out: list[FilesystemEvent] = []
        names = IdNames()
        carried, self._unpaired_moves = self._unpaired_moves, {}
        moved_dirs: dict[int, str] = dict(carried)  # cookie → old rel of a directory moved away
        last_move: int | None = None  # cookie, while the latest event is a directory's MOVED_FROM
        for ev in inotify.parse_events(data):
            if self._closed:
                break
            mask = ev.mask
            last_move = None
            if carried:
                # The pair's MOVED_TO can only be the very next event.
                paired = ev.cookie if mask & inotify.IN_MOVED_TO else None
                for cookie, gone in carried.items():
                    if cookie != paired:
                        del moved_dirs[cookie]
                        self._drop_watches(gone)
                carried = {}
            if mask & inotify.IN_Q_OVERFLOW:
                raise FatalWatchError(OVERFLOW_MESSAGE)
            if mask & inotify.IN_IGNORED:
                rel = self._wds.pop(ev.wd, None)
                if rel is not None and self._dirs.get(rel) == ev.wd:
                    del self._dirs[rel]
                continue
            parent = self._wds.get(ev.wd)
            if parent is None and self._adopt_early(ev.wd):
                parent = self._wds.get(ev.wd)
            if parent is None:
                continue  # a watch we already dropped
            rel = f"{parent}/{ev.name}" if parent and ev.name else (ev.name or parent)
            is_root = ev.wd == self._root_wd and not ev.name
            if mask & (inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF) and not is_root:
                continue  # the parent's watch reports it (IN_DELETE / IN_MOVED_FROM)
            is_dir = bool(mask & inotify.IN_ISDIR)
            self._emit(out, names, mask, rel)
            if is_root and mask & inotify.IN_MOVE_SELF:
                # The tree now lives elsewhere under another name: stop watching it.
                self._drop_watches("", everything=True)
            if not (self.recursive and is_dir):
                continue
            if mask & inotify.IN_MOVED_FROM:
                moved_dirs[ev.cookie] = rel
                last_move = ev.cookie
            elif mask & inotify.IN_MOVED_TO and ev.cookie in moved_dirs:
                self._relabel(moved_dirs.pop(ev.cookie), rel)
            elif mask & (inotify.IN_CREATE | inotify.IN_MOVED_TO):
                self._watch_new_dir(out, names, rel)
        # Directories moved out of the tree: drop their watches (upstream keeps
        # them and reports later changes under the stale name). A move first
        # seen in this batch may still be paired by the next one.
        for cookie, gone in moved_dirs.items():
            if cookie == last_move:
                self._unpaired_moves[cookie] = gone
            else:
                self._drop_watches(gone)
        return out

    def _emit(self, out: list[FilesystemEvent], names: IdNames, mask: int, rel: str) -> None:
        name = rel or "."
        for bits, op in _OPS:
            if not mask & bits:
                continue
            try:
                event = FilesystemEvent(name=name, type=op)
            except ValueError:
                return  # not UTF-8: a proto string cannot carry it (see compatibility.md)
            if self.include_entry and op in _WITH_ENTRY:
                # Gone already (or not representable): upstream omits the entry.
                with contextlib.suppress(OSError, ValueError):
                    event.entry.CopyFrom(entry_info(self._abs(rel), names))
            out.append(event)

    def _abs(self, rel: str) -> str:
        if not rel:
            return self.root
        return self.root.rstrip("/") + "/" + rel

    def _on_dir_created(self, path: str) -> None:
        """ensure_dirs made `path` (its thread, before filling it): watch it now."""
        prefix = self.root.rstrip("/") + "/"
        if not path.startswith(prefix):
            return
        rel = path[len(prefix) :]
        parent = rel.rpartition("/")[0]
        with self._tree_lock:
            if parent not in self._dirs and parent not in self._early.values():
                return  # not (or no longer) inside the watched tree
            with self._lock:
                if self._closed:
                    return
                try:
                    wd = inotify.add_watch(self.fd, path, _SUB_MASK)
                except OSError:
                    return  # gone again: the kernel reports what happened
            if wd not in self._wds:
                self._early[wd] = rel

    def _adopt_early(self, wd: int) -> bool:
        with self._tree_lock:
            rel = self._early.pop(wd, None)
        if rel is None:
            return False
        self._register(wd, rel)
        return True

    def _register(self, wd: int, rel: str) -> None:
        old = self._wds.get(wd)
        if old is not None and self._dirs.get(old) == wd:
            del self._dirs[old]
        self._wds[wd] = rel
        self._dirs[rel] = wd

    def _add_sub_watch(self, rel: str) -> int | None:
        try:
            wd = inotify.add_watch(self.fd, self._abs(rel), _SUB_MASK)
        except OSError as e:
            if e.errno in _GONE:
                return None  # removed or replaced before we got to it: nothing to watch
            if e.errno == errno.EBADF and self._closed:
                return None
            raise FatalWatchError(f"watcher error: {errno_text(e.errno)}") from e
        self._register(wd, rel)
        return wd

    def _watch_new_dir(self, out: list[FilesystemEvent], names: IdNames, rel: str) -> None:
        with self._tree_lock:
            self._watch_new_dir_locked(out, names, rel)

    def _watch_new_dir_locked(self, out: list[FilesystemEvent], names: IdNames, rel: str) -> None:
        """Watch a new directory, then report (and watch) everything already inside it."""
        wd = self._add_sub_watch(rel)
        if wd is None:
            return
        if self._early.pop(wd, None) is not None:
            # Watched by ensure_dirs before anything was put inside: every
            # entry's own events follow in the queue, so no synthetic CREATEs.
            return
        stack = [rel]
        while stack:
            current = stack.pop()
            try:
                entries = _sorted_entries(self._abs(current))
            except OSError:
                continue  # vanished meanwhile: its removal is reported by the kernel
            subdirs = []
            for entry in entries:
                child = f"{current}/{entry.name}"
                self._emit(out, names, inotify.IN_CREATE, child)
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir and self._add_sub_watch(child) is not None:
                    subdirs.append(child)
            stack.extend(reversed(subdirs))

    def _relabel(self, old: str, new: str) -> None:
        prefix = old + "/"
        for rel, wd in list(self._dirs.items()):
            if rel == old or rel.startswith(prefix):
                renamed = new + rel[len(old) :]
                del self._dirs[rel]
                self._dirs[renamed] = wd
                self._wds[wd] = renamed

    def _drop_watches(self, old: str, everything: bool = False) -> None:
        prefix = old + "/"
        for rel, wd in list(self._dirs.items()):
            if everything or rel == old or rel.startswith(prefix):
                del self._dirs[rel]
                self._wds.pop(wd, None)
                inotify.rm_watch(self.fd, wd)
