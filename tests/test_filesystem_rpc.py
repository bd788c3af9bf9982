"""Filesystem unary RPCs through the e2b SDK (sync and async) and raw Connect calls."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from e2b import AsyncSandbox, FileType, Sandbox
from e2b.exceptions import InvalidArgumentException, NotFoundException, SandboxException

from tests.daemon import Daemon
from tests.fsrpc import call, error, ok

USER_UID = 1001


@pytest.fixture
def base(tmp_path: Path) -> Path:
    # tmp_path is 0700 root-owned; the daemon runs as root, so that is fine.
    return tmp_path


def write(path: Path, text: str) -> None:
    path.write_text(text)


def make_special(base: Path) -> dict[str, Path]:
    fifo = base / "fifo"
    os.mkfifo(fifo, 0o644)
    sock_path = base / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    os.chmod(sock_path, 0o755)
    return {"fifo": fifo, "sock": sock_path}


# -- Stat / get_info / exists --


def test_stat_regular_file_fields(envd: Daemon, base: Path) -> None:
    f = base / "a.txt"
    f.write_text("hello")
    os.chmod(f, 0o644)
    os.setxattr(f, "user.e2b.owner-team", b"ml")
    os.setxattr(f, "user.other", b"ignored")
    os.setxattr(f, "user.e2b.bad", b"\xff\xfe")  # not UTF-8: skipped
    entry = ok(envd.url, "Stat", {"path": str(f)})["entry"]
    st = os.lstat(f)
    assert entry["name"] == "a.txt"
    assert entry["type"] == "FILE_TYPE_FILE"
    assert entry["path"] == str(f)
    assert entry["size"] == "5"  # int64 as a JSON string
    assert entry["mode"] == 0o644
    assert entry["permissions"] == "-rw-r--r--"
    assert entry["owner"] == "root"
    assert entry["group"] == "root"
    assert entry["metadata"] == {"owner-team": "ml"}
    assert "symlinkTarget" not in entry
    seconds, _, frac = entry["modifiedTime"].rstrip("Z").partition(".")
    assert seconds.startswith("20") or seconds.startswith("19")
    assert int(frac or "0") * 10 ** (9 - len(frac or "0")) == st.st_mtime_ns % 10**9


@pytest.mark.parametrize(
    ("kind", "mode", "permissions"),
    [
        ("dir", 0o755, "drwxr-xr-x"),
        ("dir", 0o1777, "dtrwxrwxrwx"),
        ("dir", 0o2755, "dgrwxr-xr-x"),
        ("file", 0o6755, "ugrwxr-xr-x"),
        ("file", 0o4700, "urwx------"),
    ],
)
def test_stat_permission_strings_are_go_format(
    envd: Daemon, base: Path, kind: str, mode: int, permissions: str
) -> None:
    p = base / "x"
    if kind == "dir":
        p.mkdir()
    else:
        p.write_text("")
    os.chmod(p, mode)
    entry = ok(envd.url, "Stat", {"path": str(p)})["entry"]
    assert entry["permissions"] == permissions
    assert entry["mode"] == mode & 0o777  # no type, setuid/setgid/sticky bits


def test_stat_special_files(envd: Daemon, base: Path) -> None:
    special = make_special(base)
    fifo = ok(envd.url, "Stat", {"path": str(special["fifo"])})["entry"]
    assert "type" not in fifo  # FILE_TYPE_UNSPECIFIED is the zero value: omitted
    assert fifo["permissions"] == "prw-r--r--"
    assert fifo["mode"] == 0o644
    sock = ok(envd.url, "Stat", {"path": str(special["sock"])})["entry"]
    assert "type" not in sock
    assert sock["permissions"] == "Srwxr-xr-x"
    null = ok(envd.url, "Stat", {"path": "/dev/null"})["entry"]
    assert "type" not in null
    assert null["permissions"] == "Dcrw-rw-rw-"
    assert null["mode"] == 0o666


def test_stat_block_device(envd: Daemon, base: Path) -> None:
    dev = base / "blk"
    try:
        os.mknod(dev, stat.S_IFBLK | 0o660, os.makedev(7, 0))
    except PermissionError:
        pytest.skip("mknod not permitted here")
    os.chmod(dev, 0o660)
    entry = ok(envd.url, "Stat", {"path": str(dev)})["entry"]
    assert entry["permissions"] == "Drw-rw----"
    assert "type" not in entry


def test_stat_symlinks(envd: Daemon, base: Path) -> None:
    target = base / "real"
    target.mkdir()
    os.chmod(target, 0o750)
    (base / "f").write_text("12345")
    os.chmod(base / "f", 0o600)
    os.symlink(target, base / "to-dir")
    os.symlink("f", base / "to-file")  # relative link text: target is resolved
    os.symlink(base / "to-file", base / "chain")
    os.symlink(base / "missing", base / "dangling")
    os.symlink(base / "loop-b", base / "loop-a")
    os.symlink(base / "loop-a", base / "loop-b")

    to_dir = ok(envd.url, "Stat", {"path": str(base / "to-dir")})["entry"]
    assert to_dir["type"] == "FILE_TYPE_DIRECTORY"
    assert to_dir["mode"] == 0o750  # the target's bits
    assert to_dir["permissions"] == "Lrwxrwxrwx"  # the link's own mode string
    assert to_dir["size"] == str(len(str(target)))  # the link's own size
    assert to_dir["symlinkTarget"] == str(target)
    assert "isSymlink" not in to_dir  # upstream never sets it (docs/compatibility.md)

    chain = ok(envd.url, "Stat", {"path": str(base / "chain")})["entry"]
    assert chain["type"] == "FILE_TYPE_FILE"
    assert chain["symlinkTarget"] == str(base / "f")  # fully resolved
    assert chain["mode"] == 0o600

    for name in ("dangling", "loop-a"):
        entry = ok(envd.url, "Stat", {"path": str(base / name)})["entry"]
        assert "type" not in entry
        assert "mode" not in entry  # 0: the target cannot be stat'ed
        assert entry["symlinkTarget"] == str(base / name)  # its own path


def test_stat_errors(envd: Daemon, base: Path) -> None:
    missing = base / "nope"
    assert error(envd.url, "Stat", {"path": str(missing)}) == (
        "not_found",
        f"file not found: lstat {missing}: no such file or directory",
    )
    (base / "file").write_text("")
    under_file = base / "file" / "x"
    assert error(envd.url, "Stat", {"path": str(under_file)}) == (
        "internal",
        f"error getting file info: lstat {under_file}: not a directory",
    )
    assert error(envd.url, "Stat", {"path": "~root/x"}) == (
        "invalid_argument",
        "failed to expand path '~root/x' for user 'root': cannot expand user-specific home dir",
    )
    status, body = call(envd.url, "Stat", {"path": "/"}, user="nobody-here")
    assert (status, body["code"], body["message"]) == (
        401,
        "unauthenticated",
        "invalid username: 'nobody-here'",
    )


def test_path_resolution(envd: Daemon, base: Path) -> None:
    # Relative paths and `~` resolve against the requesting user's home, cleaned.
    assert ok(envd.url, "Stat", {"path": ""}, user="user")["entry"]["path"] == "/home/user"
    assert ok(envd.url, "Stat", {"path": "~"}, user="user")["entry"]["path"] == "/home/user"
    assert ok(envd.url, "Stat", {"path": "~/"}, user="user")["entry"]["path"] == "/home/user"
    assert ok(envd.url, "Stat", {"path": "../../etc/passwd"}, user="user")["entry"]["path"] == (
        "/etc/passwd"
    )
    assert ok(envd.url, "Stat", {"path": "."})["entry"]["path"] == "/root"
    # Absolute paths reach the kernel verbatim, `..` and `.` included.
    (base / "d").mkdir()
    odd = f"{base}/d/../d/./"
    entry = ok(envd.url, "Stat", {"path": odd})["entry"]
    # The name is the last element as Go names it: `.` here.
    assert (entry["path"], entry["name"], entry["type"]) == (odd, ".", "FILE_TYPE_DIRECTORY")
    (base / "f").write_text("")
    code, message = error(envd.url, "Stat", {"path": f"{base}/f/"})
    assert (code, message) == (
        "internal",
        f"error getting file info: lstat {base}/f/: not a directory",
    )


def test_sdk_exists_and_get_info(sandbox: Sandbox, base: Path) -> None:
    (base / "f").write_text("x")
    assert sandbox.files.exists(str(base / "f"))
    assert not sandbox.files.exists(str(base / "missing"))
    assert not sandbox.files.exists(str(base / "missing" / "deeper"))
    with pytest.raises(SandboxException, match="not a directory"):
        sandbox.files.exists(str(base / "f" / "under-a-file"))
    info = sandbox.files.get_info(str(base / "f"))
    assert (info.name, info.type, info.size, info.mode) == ("f", FileType.FILE, 1, 0o644)
    with pytest.raises(NotFoundException):
        sandbox.files.get_info(str(base / "missing"))
    os.symlink(base / "f", base / "link")
    link = sandbox.files.get_info(str(base / "link"))
    # Upstream reports the target's type; the SDK sees a file with a symlink target.
    assert (link.type, link.symlink_target) == (FileType.FILE, str(base / "f"))


# -- MakeDir --


def test_make_dir_creates_parents_owned_by_user(envd: Daemon, base: Path) -> None:
    os.chmod(base, 0o755)
    target = base / "a" / "b" / "c"
    entry = ok(envd.url, "MakeDir", {"path": str(target)}, user="user")["entry"]
    assert entry["path"] == str(target)
    assert entry["type"] == "FILE_TYPE_DIRECTORY"
    assert (entry["owner"], entry["group"]) == ("user", "user")
    for p in (base / "a", base / "a" / "b", target):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (USER_UID, USER_UID, 0o755)
    assert os.stat(base).st_uid == 0  # existing directories are not chowned


def test_make_dir_errors(envd: Daemon, base: Path) -> None:
    (base / "d").mkdir()
    (base / "f").write_text("")
    assert error(envd.url, "MakeDir", {"path": str(base / "d")}) == (
        "already_exists",
        f"directory already exists: {base / 'd'}",
    )
    assert error(envd.url, "MakeDir", {"path": str(base / "f")}) == (
        "invalid_argument",
        f"path already exists but it is not a directory: {base / 'f'}",
    )
    assert error(envd.url, "MakeDir", {"path": str(base / "f" / "x")}) == (
        "internal",
        f"error getting file info: stat {base / 'f' / 'x'}: not a directory",
    )
    # A dangling symlink in the chain: mkdir sees EEXIST, chown ENOENT (upstream quirk).
    os.symlink(base / "nowhere", base / "dangling")
    assert error(envd.url, "MakeDir", {"path": str(base / "dangling" / "x")}) == (
        "internal",
        f"failed to chown directory: chown {base / 'dangling'}: no such file or directory",
    )


def test_sdk_make_dir(sandbox: Sandbox, base: Path) -> None:
    assert sandbox.files.make_dir(str(base / "new" / "dir")) is True
    assert sandbox.files.make_dir(str(base / "new" / "dir")) is False
    (base / "file").write_text("")
    with pytest.raises(InvalidArgumentException):
        sandbox.files.make_dir(str(base / "file"))


# -- Move --


def test_move_creates_destination_parents_and_keeps_owner(envd: Daemon, base: Path) -> None:
    os.chmod(base, 0o755)
    src = base / "src.txt"
    src.write_text("data")
    os.chmod(src, 0o640)
    dst = base / "x" / "y" / "dst.txt"
    entry = ok(envd.url, "Move", {"source": str(src), "destination": str(dst)}, user="user")
    assert entry["entry"]["path"] == str(dst)
    assert dst.read_text() == "data"
    assert not src.exists()
    assert (os.stat(dst).st_uid, os.stat(dst).st_mode & 0o777) == (0, 0o640)
    assert os.stat(base / "x").st_uid == USER_UID
    assert os.stat(base / "x" / "y").st_uid == USER_UID


def test_move_errors(envd: Daemon, base: Path) -> None:
    missing, dst = base / "missing", base / "new-parent" / "dst"
    assert error(envd.url, "Move", {"source": str(missing), "destination": str(dst)}) == (
        "not_found",
        f"source file not found: rename {missing} {dst}: no such file or directory",
    )
    assert (base / "new-parent").is_dir()  # parents are created before the rename

    (base / "f").write_text("")
    (base / "empty-dir").mkdir()
    assert error(
        envd.url, "Move", {"source": str(base / "f"), "destination": str(base / "empty-dir")}
    ) == ("internal", f"error renaming: rename {base / 'f'} {base / 'empty-dir'}: file exists")
    # A directory onto itself, spelled identically, fails the same way.
    d = str(base / "empty-dir")
    assert error(envd.url, "Move", {"source": d, "destination": d}) == (
        "internal",
        f"error renaming: rename {d} {d}: file exists",
    )
    (base / "parent").mkdir()
    sub = base / "parent" / "sub"
    assert error(envd.url, "Move", {"source": str(base / "parent"), "destination": str(sub)}) == (
        "internal",
        f"error renaming: rename {base / 'parent'} {sub}: invalid argument",
    )
    assert error(envd.url, "Move", {"source": str(base / "f"), "destination": f"{base}/f/x/y"}) == (
        "internal",
        f"path is a file: {base}/f",  # ensure-dirs walks down from the top
    )


def test_move_replaces_file_and_moves_links_themselves(envd: Daemon, base: Path) -> None:
    (base / "a").write_text("A")
    (base / "b").write_text("B")
    ok(envd.url, "Move", {"source": str(base / "a"), "destination": str(base / "b")})
    assert (base / "b").read_text() == "A"
    os.symlink(base / "b", base / "link")
    entry = ok(envd.url, "Move", {"source": str(base / "link"), "destination": str(base / "l2")})
    assert os.readlink(base / "l2") == str(base / "b")
    assert entry["entry"]["symlinkTarget"] == str(base / "b")
    same = str(base / "b")
    ok(envd.url, "Move", {"source": same, "destination": same})  # no-op
    assert (base / "b").read_text() == "A"


def test_sdk_rename(sandbox: Sandbox, base: Path) -> None:
    (base / "old name.txt").write_text("x")
    info = sandbox.files.rename(str(base / "old name.txt"), str(base / "nouveau é.txt"))
    assert (info.name, info.path) == ("nouveau é.txt", str(base / "nouveau é.txt"))
    with pytest.raises(NotFoundException):
        sandbox.files.rename(str(base / "old name.txt"), str(base / "again"))


# -- ListDir --


def build_tree(base: Path) -> Path:
    root = base / "t"
    for d in ("test-dir/sub-dir-1", "test-dir/sub-dir-2", "B", "a b"):
        (root / d).mkdir(parents=True)
    (root / "test-dir" / "sub-dir-1" / "file.txt").write_text("x")
    for name in ("a", "Z", "ä", "_"):
        (root / name).write_text(name)
    return root


def test_list_dir_order_and_depth(envd: Daemon, base: Path) -> None:
    root = build_tree(base)
    entries = ok(envd.url, "ListDir", {"path": str(root), "depth": 3})["entries"]
    paths = [e["path"][len(str(root)) + 1 :] for e in entries]
    # Byte-wise order within each directory, depth-first pre-order, root excluded.
    assert paths == [
        "B",
        "Z",
        "_",
        "a",
        "a b",
        "test-dir",
        "test-dir/sub-dir-1",
        "test-dir/sub-dir-1/file.txt",
        "test-dir/sub-dir-2",
        "ä",
    ]
    assert [e["name"] for e in entries][-4:] == ["sub-dir-1", "file.txt", "sub-dir-2", "ä"]
    depth1 = ok(envd.url, "ListDir", {"path": str(root), "depth": 1})["entries"]
    assert [e["name"] for e in depth1] == ["B", "Z", "_", "a", "a b", "test-dir", "ä"]
    # Depth 0 means 1.
    assert ok(envd.url, "ListDir", {"path": str(root)})["entries"] == depth1
    depth2 = ok(envd.url, "ListDir", {"path": str(root), "depth": 2})["entries"]
    assert len(depth2) == len(entries) - 1
    assert ok(envd.url, "ListDir", {"path": str(root / "B")}) == {}


def test_list_dir_symlinks(envd: Daemon, base: Path) -> None:
    root = build_tree(base)
    link = base / "link-root"
    os.symlink(root, link)
    os.symlink(root / "test-dir", root / "inner-link")
    os.symlink(base / "missing", root / "dangling")
    entries = ok(envd.url, "ListDir", {"path": str(link), "depth": 5})["entries"]
    by_name = {e["path"]: e for e in entries}
    # Paths under the requested spelling; only the root link is followed.
    assert str(link / "test-dir" / "sub-dir-1" / "file.txt") in by_name
    inner = by_name[str(link / "inner-link")]
    assert inner["type"] == "FILE_TYPE_DIRECTORY"
    assert inner["symlinkTarget"] == str(root / "test-dir")
    assert not any(p.startswith(str(link / "inner-link") + "/") for p in by_name)
    assert "type" not in by_name[str(link / "dangling")]


def test_list_dir_errors(envd: Daemon, base: Path) -> None:
    missing = base / "missing" / "x"
    assert error(envd.url, "ListDir", {"path": str(missing)}) == (
        "not_found",
        f"path not found: lstat {base / 'missing'}: no such file or directory",
    )
    (base / "f").write_text("")
    os.symlink(base / "f", base / "to-file")
    assert error(envd.url, "ListDir", {"path": str(base / "to-file")}) == (
        "invalid_argument",
        f"path is not a directory: {base / 'f'}",  # the canonical path
    )
    os.symlink(base / "b", base / "a")
    os.symlink(base / "a", base / "b")
    assert error(envd.url, "ListDir", {"path": str(base / "a")}) == (
        "failed_precondition",
        f'cyclic symlink or chain >255 links at "{base / "a"}"',
    )
    assert error(envd.url, "ListDir", {"path": str(base / "f" / "x")}) == (
        "internal",
        "error resolving symlink: not a directory",
    )


def test_sdk_list_drops_unspecified_types(sandbox: Sandbox, base: Path) -> None:
    root = build_tree(base)
    make_special(root)
    os.symlink(base / "missing", root / "dangling")
    names = [e.name for e in sandbox.files.list(str(root))]
    assert names == ["B", "Z", "_", "a", "a b", "test-dir", "ä"]
    deep = sandbox.files.list(str(root), depth=3)
    assert [e.path for e in deep if e.type == FileType.FILE][-2:] == [
        str(root / "test-dir" / "sub-dir-1" / "file.txt"),
        str(root / "ä"),
    ]
    with pytest.raises(NotFoundException):
        sandbox.files.list(str(base / "missing"))


def test_list_dir_relative_to_home(envd: Daemon) -> None:
    home = Path("/home/user")
    marker = home / "envd-py-listdir-marker"
    marker.mkdir(exist_ok=True)
    try:
        names = [e["name"] for e in ok(envd.url, "ListDir", {"path": ""}, user="user")["entries"]]
        assert marker.name in names
    finally:
        marker.rmdir()


# -- Remove --


def test_remove(envd: Daemon, base: Path) -> None:
    root = build_tree(base)
    ok(envd.url, "Remove", {"path": str(base / "missing" / "deeper")})  # missing: success
    target = base / "keep"
    target.write_text("k")
    os.symlink(target, base / "link")
    assert ok(envd.url, "Remove", {"path": str(base / "link")}) == {}
    assert target.exists()
    assert not (base / "link").exists()
    ok(envd.url, "Remove", {"path": str(root)})
    assert not root.exists()
    code, message = error(envd.url, "Remove", {"path": f"{base}/."})
    assert (code, message) == (
        "internal",
        f"error removing file or directory: RemoveAll {base}/.: invalid argument",
    )


def test_sdk_remove(sandbox: Sandbox, base: Path) -> None:
    (base / "d" / "e").mkdir(parents=True)
    (base / "d" / "e" / "f").write_text("x")
    sandbox.files.remove(str(base / "d"))
    assert not (base / "d").exists()
    sandbox.files.remove(str(base / "d"))  # again: no error


# -- async SDK --


async def test_async_sdk_file_calls(async_sandbox: AsyncSandbox, tmp_path: Path) -> None:
    files = async_sandbox.files
    base = str(tmp_path)
    assert await files.make_dir(f"{base}/dir with space/ünï")
    assert not await files.make_dir(f"{base}/dir with space/ünï")
    write(Path(base, "dir with space", "ünï", "f.txt"), "x")
    assert await files.exists(f"{base}/dir with space/ünï/f.txt")
    assert not await files.exists(f"{base}/nope")
    info = await files.get_info(f"{base}/dir with space/ünï/f.txt")
    assert (info.name, info.type, info.size) == ("f.txt", FileType.FILE, 1)
    listed = await files.list(base, depth=3)
    assert [e.name for e in listed] == ["dir with space", "ünï", "f.txt"]
    moved = await files.rename(f"{base}/dir with space/ünï/f.txt", f"{base}/../{tmp_path.name}/g")
    assert moved.path == f"{base}/../{tmp_path.name}/g"
    assert (await files.get_info(f"{base}/g")).size == 1
    with pytest.raises(NotFoundException):
        await files.get_info(f"{base}/nope")
    await files.remove(f"{base}/dir with space")
    assert not await files.exists(f"{base}/dir with space")
