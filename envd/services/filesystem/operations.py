"""The unary filesystem operations, blocking, with upstream's codes and messages.

Each function is one worker-thread call from the service (a whole ListDir
included), so a slow filesystem never stalls the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import stat
from collections.abc import Iterator

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from envd.fs.dirs import EnsureDirsError, UserIdError, ensure_dirs, user_ids
from envd.fs.entry import EntryInfo, Fields, IdNames, entry_fields, entry_info
from envd.fs.errors import errno_text, go_quote, link_error, path_error
from envd.permissions.paths import go_clean, go_dir
from envd.permissions.users import User

_name = operator.attrgetter("name")


def _marshal_error() -> ConnectError:
    # A proto3 string must be UTF-8; upstream fails the whole response the same way.
    return ConnectError(Code.INTERNAL, "marshal message: string field contains invalid UTF-8")


def stat_entry(path: str, names: IdNames | None = None) -> EntryInfo:
    """EntryInfo of `path` or upstream's `file not found` / `error getting file info`."""
    try:
        return entry_info(path, names)
    except FileNotFoundError as e:
        raise ConnectError(Code.NOT_FOUND, f"file not found: {path_error('lstat', path, e)}") from e
    except OSError as e:
        raise ConnectError(
            Code.INTERNAL, f"error getting file info: {path_error('lstat', path, e)}"
        ) from e
    except ValueError as e:
        raise _marshal_error() from e


def _ids(user: User) -> tuple[int, int]:
    try:
        return user_ids(user)
    except UserIdError as e:
        raise ConnectError(Code.INTERNAL, str(e)) from e


def _ensure_dirs(path: str, uid: int, gid: int) -> None:
    try:
        ensure_dirs(path, uid, gid)
    except EnsureDirsError as e:
        raise ConnectError(Code.INTERNAL, str(e)) from e


def make_dir(path: str, user: User) -> EntryInfo:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ConnectError(
            Code.INTERNAL, f"error getting file info: {path_error('stat', path, e)}"
        ) from e
    else:
        if stat.S_ISDIR(st.st_mode):
            raise ConnectError(Code.ALREADY_EXISTS, f"directory already exists: {path}")
        raise ConnectError(
            Code.INVALID_ARGUMENT, f"path already exists but it is not a directory: {path}"
        )
    uid, gid = _ids(user)
    _ensure_dirs(path, uid, gid)
    return stat_entry(path)


def _go_rename(source: str, destination: str) -> None:
    """rename(2) with Go's pre-check: an existing directory is never replaced."""
    try:
        dst = os.lstat(destination)
    except OSError:
        dst = None
    if dst is not None and stat.S_ISDIR(dst.st_mode):
        src = os.lstat(source)  # its error (ENOENT...) wins, as in Go
        same = (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino)
        if source == destination or not same:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
    os.rename(source, destination)


def move(source: str, destination: str, user: User) -> EntryInfo:
    uid, gid = _ids(user)
    # Parents first, even when the rename then fails (upstream order).
    _ensure_dirs(go_dir(destination), uid, gid)
    try:
        _go_rename(source, destination)
    except FileNotFoundError as e:
        raise ConnectError(
            Code.NOT_FOUND, f"source file not found: {link_error('rename', source, destination, e)}"
        ) from e
    except OSError as e:
        raise ConnectError(
            Code.INTERNAL, f"error renaming: {link_error('rename', source, destination, e)}"
        ) from e
    return stat_entry(destination)


def _canonical(requested: str) -> str:
    try:
        return os.path.realpath(requested, strict=True)
    except FileNotFoundError as e:
        missing = e.filename or requested
        raise ConnectError(
            Code.NOT_FOUND, f"path not found: {path_error('lstat', missing, e)}"
        ) from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConnectError(
                Code.FAILED_PRECONDITION,
                f"cyclic symlink or chain >255 links at {go_quote(requested)}",
            ) from e
        if e.errno == errno.ENOTDIR:
            raise ConnectError(Code.INTERNAL, "error resolving symlink: not a directory") from e
        missing = e.filename or requested
        raise ConnectError(
            Code.INTERNAL, f"error resolving symlink: {path_error('lstat', missing, e)}"
        ) from e


def list_dir(requested: str, depth: int) -> list[Fields]:
    """Entries under `requested` (root excluded), depth-first, byte-wise sorted.

    Only the root is followed if it is a symlink; paths are reported under the
    requested spelling.
    """
    depth = depth or 1
    canonical = _canonical(requested)
    try:
        st = os.stat(canonical)
    except FileNotFoundError as e:
        raise ConnectError(
            Code.NOT_FOUND, f"directory not found: {path_error('stat', canonical, e)}"
        ) from e
    except OSError as e:
        raise ConnectError(
            Code.INTERNAL, f"error getting file info: {path_error('stat', canonical, e)}"
        ) from e
    if not stat.S_ISDIR(st.st_mode):
        raise ConnectError(Code.INVALID_ARGUMENT, f"path is not a directory: {canonical}")

    names = IdNames()
    entries: list[Fields] = []
    # Walked names are plain components, so cleaning the prefix once is enough.
    prefix = go_clean(requested).rstrip("/") + "/"

    def failed(text: str) -> ConnectError:
        return ConnectError(Code.INTERNAL, f"error reading directory {canonical}: {text}")

    def children(directory: str) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(directory) as it:
                listed = list(it)
        except FileNotFoundError:
            return iter(())  # vanished while we walked: nothing left to list
        except OSError as e:
            raise failed(path_error("open", directory, e)) from e
        try:
            # Code-point order is UTF-8 byte order, and a C key is much faster...
            "".join([entry.name for entry in listed]).encode()
            listed.sort(key=_name)
        except UnicodeEncodeError:
            # ...but a name that is not UTF-8 holds surrogates, which sort elsewhere.
            listed.sort(key=lambda entry: os.fsencode(entry.name))
        return iter(listed)

    # Pre-order walk with an explicit stack (deep trees need no recursion): a
    # directory is emitted, then its subtree, then its next sibling. Each
    # level keeps its iterator and the path its children are shown under.
    stack: list[tuple[Iterator[os.DirEntry[str]], str, int]] = [(children(canonical), prefix, 1)]
    while stack:
        it, shown_dir, level = stack[-1]
        for child in it:
            name = child.name
            shown = shown_dir + name
            try:
                fields = entry_fields(child.path, names, name, shown)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise failed(
                    f"internal: error getting file info: {path_error('lstat', child.path, e)}"
                ) from e
            except ValueError:
                continue  # a name that is not UTF-8 cannot travel in a proto string
            entries.append(fields)
            # Never through a link: its permission string ([5]) starts with `L`.
            if level < depth and fields[5].startswith("d"):
                stack.append((children(child.path), shown + "/", level + 1))
                break  # its subtree first; this level's iterator resumes after
        else:
            stack.pop()
    return entries


def remove(path: str) -> None:
    """`os.RemoveAll`: a missing path is success; a symlink is removed, not followed."""
    if path == "." or path.endswith("/."):
        raise ConnectError(
            Code.INTERNAL,
            f"error removing file or directory: RemoveAll {path}: {errno_text(errno.EINVAL)}",
        )
    try:
        _remove_all(path)
    except OSError as e:
        raise ConnectError(
            Code.INTERNAL,
            f"error removing file or directory: {path_error('unlinkat', e.filename or path, e)}",
        ) from e


def _remove_all(path: str) -> None:
    try:
        os.unlink(path)
        return
    except (FileNotFoundError, NotADirectoryError):
        return
    except IsADirectoryError:
        pass
    try:
        os.rmdir(path)
        return
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    with os.scandir(path) as it:
        children = [entry.path for entry in it]
    for child in children:
        _remove_all(child)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)
