"""Unit tests of the temporary-inode-then-install step (envd/fs/install.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from envd.fs import install


def _write(temp: install.TempFile, data: bytes) -> None:
    os.write(temp.fd, data)


def test_anonymous_inode_is_invisible_until_linked(tmp_path: Path) -> None:
    temp = install.create(str(tmp_path), str(tmp_path / ".fallback"))
    try:
        assert temp.anonymous
        assert temp.name is None
        _write(temp, b"hello")
        assert os.listdir(tmp_path) == []
        assert install.link_new(temp, str(tmp_path / "f"))
        assert (tmp_path / "f").read_bytes() == b"hello"
        assert os.listdir(tmp_path) == ["f"]
    finally:
        install.discard(temp)
    assert temp.fd == -1
    assert (tmp_path / "f").read_bytes() == b"hello"


def test_link_new_refuses_an_existing_name_and_replace_renames_over_it(tmp_path: Path) -> None:
    dest = tmp_path / "f"
    dest.write_bytes(b"old")
    old_ino = dest.stat().st_ino
    temp = install.create(str(tmp_path), str(tmp_path / ".fallback"))
    try:
        _write(temp, b"new")
        assert not install.link_new(temp, str(dest))
        assert dest.read_bytes() == b"old"
        install.replace(temp, str(dest), str(tmp_path / ".link"))
        install.close(temp)
    finally:
        install.discard(temp)
    assert dest.read_bytes() == b"new"
    assert dest.stat().st_ino != old_ino
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_fallback_name_is_used_where_anonymous_inodes_are_impossible(tmp_path: Path) -> None:
    # A directory that does not exist cannot hold an O_TMPFILE (ENOENT): the
    # fallback name elsewhere is created exclusively instead.
    fallback = tmp_path / ".fallback"
    temp = install.create(str(tmp_path / "missing"), str(fallback))
    try:
        assert not temp.anonymous
        assert temp.name == str(fallback)
        assert fallback.exists()
        _write(temp, b"x")
        assert not install.link_new(temp, str(tmp_path / "f"))
        install.replace(temp, str(tmp_path / "f"), str(tmp_path / ".unused"))
        assert temp.name is None
    finally:
        install.discard(temp)
    assert sorted(os.listdir(tmp_path)) == ["f"]
    assert (tmp_path / "f").read_bytes() == b"x"


def test_fallback_name_is_never_clobbered(tmp_path: Path) -> None:
    fallback = tmp_path / ".fallback"
    fallback.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        install.create(str(tmp_path / "missing"), str(fallback))
    assert fallback.read_bytes() == b"someone else's"


def test_discard_leaves_nothing_behind(tmp_path: Path) -> None:
    anonymous = install.create(str(tmp_path), str(tmp_path / ".a"))
    named = install.create(str(tmp_path / "missing"), str(tmp_path / ".b"))
    _write(anonymous, b"1")
    _write(named, b"2")
    install.discard(anonymous)
    install.discard(named)
    install.discard(named)  # twice is harmless
    assert os.listdir(tmp_path) == []


def test_failed_replace_removes_the_temporary_name(tmp_path: Path) -> None:
    # Renaming a file over a non-empty directory fails (EISDIR); the linked
    # temporary name must not stay behind.
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "inside").write_bytes(b"")
    temp = install.create(str(tmp_path), str(tmp_path / ".fallback"))
    try:
        with pytest.raises(IsADirectoryError):
            install.replace(temp, str(dest), str(tmp_path / ".link"))
        assert temp.name is None
    finally:
        install.discard(temp)
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_unwritable_directory_raises_the_open_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        install.create(str(tmp_path / "file"), str(tmp_path / "file" / ".x"))
