"""`files.read` / `files.write` / `files.write_files` of the real e2b SDK
(sync and async) against the daemon's `/files` endpoints."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2b import (
    AsyncSandbox,
    FileNotFoundException,
    FileType,
    InvalidArgumentException,
    Sandbox,
)
from e2b.sandbox.filesystem.filesystem import WriteEntry

USER_HOME = Path("/home/user")
USER_UID = 1001


@pytest.fixture
def home_dir() -> Iterator[Path]:
    """A fresh directory under the `user` account's home, removed afterwards."""
    path = USER_HOME / f"sdk-{uuid.uuid4().hex[:8]}"
    yield path
    os.system(f"rm -rf '{path}'")


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def xattrs(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n) for n in os.listxattr(path) if n.startswith("user.e2b.")}


# --- sync SDK ---


def test_write_text_then_read_text_bytes_and_stream(sandbox: Sandbox, tmp_path: Path) -> None:
    path = str(tmp_path / "hello.txt")
    info = sandbox.files.write(path, "Hello, 世界\n")
    assert (info.name, info.path, info.type) == ("hello.txt", path, FileType.FILE)
    assert info.metadata is None

    assert sandbox.files.read(path) == "Hello, 世界\n"
    assert sandbox.files.read(path, format="bytes") == bytearray("Hello, 世界\n".encode())
    with sandbox.files.read(path, format="stream") as stream:
        assert b"".join(stream) == "Hello, 世界\n".encode()


def test_large_binary_round_trip_every_way(sandbox: Sandbox, tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + bytes(5 << 20)  # incompressible and compressible halves
    variants: list[tuple[str, dict[str, Any]]] = [
        ("multipart", {}),
        ("octet", {"use_octet_stream": True}),
        ("gzip", {"gzip": True}),
    ]
    for name, kwargs in variants:
        path = str(tmp_path / name)
        sandbox.files.write(path, data, **kwargs)
        assert Path(path).read_bytes() == data, name
        assert sandbox.files.read(path, format="bytes") == data
        assert sandbox.files.read(path, format="bytes", gzip=True) == data
        with sandbox.files.read(path, format="stream", gzip=True) as stream:
            assert b"".join(stream) == data


def test_write_file_like_object_streams_as_octet_stream(sandbox: Sandbox, tmp_path: Path) -> None:
    path = str(tmp_path / "stream.bin")
    data = os.urandom(1 << 20)
    info = sandbox.files.write(path, io.BytesIO(data))
    assert info.path == path
    assert Path(path).read_bytes() == data


def test_write_files_writes_every_entry_in_one_request(sandbox: Sandbox, tmp_path: Path) -> None:
    entries: list[WriteEntry] = [
        WriteEntry(path=str(tmp_path / f"dir{i}" / f"f{i}.txt"), data=f"content {i}")
        for i in range(5)
    ]
    infos = sandbox.files.write_files(entries)
    assert [i.path for i in infos] == [e["path"] for e in entries]
    for i, entry in enumerate(entries):
        assert Path(entry["path"]).read_text() == f"content {i}"


def test_relative_paths_parents_and_ownership_follow_the_user(
    sandbox: Sandbox, home_dir: Path
) -> None:
    rel = f"{home_dir.name}/a/b/c.txt"
    info = sandbox.files.write(rel, "x", user="user")
    assert info.path == str(home_dir / "a/b/c.txt")
    for path in (home_dir, home_dir / "a", home_dir / "a/b", home_dir / "a/b/c.txt"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (USER_UID, USER_UID), path
    assert (home_dir / "a").stat().st_mode & 0o777 == 0o755
    assert (home_dir / "a/b/c.txt").stat().st_mode & 0o777 == 0o644
    assert sandbox.files.read(rel, user="user") == "x"
    assert sandbox.files.read(f"~/{rel}", user="user") == "x"


def test_overwrite_keeps_mode_and_chowns_to_the_user(sandbox: Sandbox, home_dir: Path) -> None:
    home_dir.mkdir()
    target = home_dir / "script.sh"
    target.write_text("old")
    target.chmod(0o750)
    os.chown(target, 0, 0)
    sandbox.files.write(str(target), "new content", user="user")
    st = target.stat()
    assert target.read_text() == "new content"
    assert st.st_mode & 0o777 == 0o750
    assert (st.st_uid, st.st_gid) == (USER_UID, USER_UID)


def test_metadata_round_trip_and_overwrite_replaces_it(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "meta.txt"
    info = sandbox.files.write(str(path), "m", metadata={"Author": "mish", "rev": "1"})
    assert info.metadata == {"author": "mish", "rev": "1"}
    assert xattrs(path) == {"user.e2b.author": b"mish", "user.e2b.rev": b"1"}

    infos = sandbox.files.write_files(
        [WriteEntry(path=str(path), data="m2"), WriteEntry(path=str(tmp_path / "b"), data="b")],
        metadata={"rev": "2"},
    )
    assert [i.metadata for i in infos] == [{"rev": "2"}, {"rev": "2"}]
    assert xattrs(path) == {"user.e2b.rev": b"2"}

    info = sandbox.files.write(str(path), "m3", use_octet_stream=True)
    assert info.metadata is None
    assert xattrs(path) == {}


def test_unicode_and_space_names(sandbox: Sandbox, tmp_path: Path) -> None:
    for name in ("my document.txt", "文档 ü.txt", "a+b&c=d;e.txt", "q'uo\"te.txt"):
        path = str(tmp_path / name)
        sandbox.files.write(path, name)
        assert sandbox.files.read(path) == name
        sandbox.files.write(path, name * 2, use_octet_stream=True)
        assert sandbox.files.read(path) == name * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["my document.txt", "文档 ü.txt", "a+b&c=d;e.txt", "q'uo\"te.txt"]
    )


def test_read_errors_map_to_sdk_exceptions(sandbox: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundException, match="does not exist"):
        sandbox.files.read(str(tmp_path / "missing"))
    with pytest.raises(InvalidArgumentException, match="is a directory"):
        sandbox.files.read(str(tmp_path))


def test_write_to_a_directory_is_invalid(sandbox: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentException, match="path is a directory"):
        sandbox.files.write(str(tmp_path), "x")


# --- async SDK ---


async def test_async_write_read_all_formats(async_sandbox: AsyncSandbox, tmp_path: Path) -> None:
    path = str(tmp_path / "async.txt")
    data = "async " * 100_000
    info = await async_sandbox.files.write(path, data, metadata={"k": "v"})
    assert (info.path, info.metadata) == (path, {"k": "v"})
    assert await async_sandbox.files.read(path) == data
    assert await async_sandbox.files.read(path, format="bytes", gzip=True) == data.encode()
    stream = await async_sandbox.files.read(path, format="stream")
    chunks = [chunk async for chunk in stream]
    assert b"".join(chunks) == data.encode()


async def test_async_write_files_gzip_and_octet(
    async_sandbox: AsyncSandbox, tmp_path: Path
) -> None:
    entries: list[WriteEntry] = [
        WriteEntry(path=str(tmp_path / "x" / "one.bin"), data=b"\x00\x01" * 1000),
        WriteEntry(path=str(tmp_path / "y" / "two.bin"), data=b"two"),
    ]
    infos = await async_sandbox.files.write_files(entries, gzip=True)
    assert [i.path for i in infos] == [e["path"] for e in entries]
    assert read_bytes(entries[0]["path"]) == b"\x00\x01" * 1000
    assert read_bytes(entries[1]["path"]) == b"two"

    infos = await async_sandbox.files.write_files(entries)
    assert [i.name for i in infos] == ["one.bin", "two.bin"]


async def test_async_errors(async_sandbox: AsyncSandbox, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundException):
        await async_sandbox.files.read(str(tmp_path / "nope"))
    with pytest.raises(InvalidArgumentException):
        await async_sandbox.files.write(str(tmp_path), b"x")
