"""The wire-ready ListDir response encodes exactly as protobuf's own encoders would.

Binary: `SerializeToString()` of the message. JSON: what our codec gives for
the message (compact `MessageToDict`), byte for byte, field order and omitted
defaults included. Checked in-process on every kind of entry, and on the wire
against a real daemon with both codecs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest

from envd.fs.entry import Fields, IdNames, entry_fields, entry_info, to_message
from envd.gen.filesystem import filesystem_pb2 as pb
from envd.rpc.codec import CompactJSONCodec, ProtoBinaryCodec
from envd.services.filesystem.operations import list_dir
from envd.services.filesystem.service import PRECOMPRESS_BYTES
from envd.services.filesystem.wire import Listing, timestamp_json
from tests.daemon import Daemon

LIST_DIR = "/filesystem.Filesystem/ListDir"


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A directory with one of every kind of entry the fast paths must get right."""
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "inner.txt").write_text("inner")
    (root / "f").write_text("12")
    os.setxattr(root / "f", "user.e2b.k", b"v")
    os.setxattr(root / "f", "user.e2b.second", "wert é".encode())
    (root / "empty").write_text("")
    os.chmod(root / "empty", 0)
    (root / "suid").write_text("#!/bin/sh\n")
    os.chmod(root / "suid", 0o6755)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    os.symlink(root / "f", root / "link")
    os.symlink(root / "sub", root / "dirlink")
    os.symlink(root / "nowhere", root / "dangling")
    os.mkfifo(root / "fifo")
    for name in ("é ü", 'q"uote', "back\\slash", "ctl\x01\x1f", "tab\tnl\n", "日本語", "😀"):
        (root / name).write_text("")
    # Every precision protojson picks: whole seconds, ms, µs, ns; zero; pre-1970.
    times = {
        "t-s": 1_500_000_000_000_000_000,
        "t-ms": 1_500_000_000_123_000_000,
        "t-us": 1_500_000_000_123_456_000,
        "t-ns": 1_500_000_000_123_456_789,
        "t-tiny": 5,
        "t-zero": 0,
        "t-1969": -1_500_000_001,
        "t-old": -2_000_000_000_000_000_000,
    }
    for name, ns in times.items():
        (root / name).write_text("x" * 300)
        os.utime(root / name, ns=(0, ns))
    os.utime(root / "sub" / "deeper", ns=(0, 0))
    return root


def synthetic() -> list[Fields]:
    # What a real listing rarely shows: empty strings, an unknown type, big numbers.
    base: Fields = ("n", 1, "/p", 1, 0o644, "-rw-r--r--", "o", "g", 1, None, {})
    variants: list[Fields] = [base]
    for index, value in (
        (0, ""),
        (1, 0),
        (1, 3),
        (2, ""),
        (3, 0),
        (3, 1 << 62),
        (4, 0),
        (5, ""),
        (6, ""),
        (7, ""),
        (8, 253402300799 * 10**9 + 999_999_999),
        (8, -62135596800 * 10**9),
        (9, ""),
        (9, "/t\u2028arget"),
        (10, {"a": "1", "b": "", "": "x"}),
    ):
        fields = list(base)
        fields[index] = value
        variants.append(tuple(fields))  # type: ignore[arg-type]
    return variants


def expected_json(message: pb.ListDirResponse) -> bytes:
    codec = CompactJSONCodec()
    # The codec's generic path: MessageToDict of the real message.
    return codec.encode(message)


def assert_both_forms(entries: list[Fields]) -> None:
    listing = Listing(entries)
    message = listing.to_message()
    assert listing.to_json() == expected_json(message)
    assert CompactJSONCodec().encode(listing) == expected_json(message)  # type: ignore[arg-type]
    assert listing.SerializeToString() == message.SerializeToString()
    assert ProtoBinaryCodec().encode(listing) == message.SerializeToString()  # type: ignore[arg-type]
    assert pb.ListDirResponse.FromString(listing.SerializeToString()) == message


def test_listing_matches_protobuf(mixed: Path) -> None:
    entries = list_dir(str(mixed), 3)
    names = {fields[0] for fields in entries}
    assert {"f", "link", "dangling", "fifo", "t-old", "😀", "inner.txt", "deeper"} <= names
    assert_both_forms(entries)
    # One at a time too, so a failure names the entry.
    for fields in entries:
        assert_both_forms([fields])


@pytest.mark.parametrize("index", range(len(synthetic())))
def test_synthetic_entries_match_protobuf(index: int) -> None:
    assert_both_forms([synthetic()[index]])


def test_empty_listing() -> None:
    assert Listing([]).to_json() == expected_json(pb.ListDirResponse()) == b"{}"
    assert Listing([]).SerializeToString() == b""


def test_fields_match_entry_info(mixed: Path) -> None:
    # Stat and ListDir describe an entry the same way.
    names = IdNames()
    for child in sorted(mixed.iterdir()):
        assert to_message(entry_fields(str(child), names)) == entry_info(str(child))
    info = entry_info(str(mixed / "f"))
    assert dict(info.metadata) == {"k": "v", "second": "wert é"}
    assert info.size == 2
    assert info.type == pb.FILE_TYPE_FILE
    link = entry_info(str(mixed / "link"))
    assert link.symlink_target == str(mixed / "f")
    assert link.permissions.startswith("L")
    assert entry_info(str(mixed / "dangling")).type == pb.FILE_TYPE_UNSPECIFIED
    assert not entry_info(str(mixed / "t-zero")).HasField("modified_time")
    assert stat.S_IMODE(os.lstat(mixed / "suid").st_mode) == 0o6755
    assert entry_info(str(mixed / "suid")).permissions == "ugrwxr-xr-x"


@pytest.mark.parametrize(
    "ns",
    [0, 1, 999, 1000, 10**6, 10**9, -1, -(10**9) - 1, 253402300799 * 10**9 + 999_999_999],
)
def test_timestamp_text(ns: int) -> None:
    stamp = pb.EntryInfo().modified_time
    stamp.FromNanoseconds(ns)
    assert timestamp_json(ns) == stamp.ToJsonString()


def test_non_utf8_names_are_skipped(tmp_path: Path) -> None:
    os.close(os.open(os.fsencode(tmp_path) + b"/bad-\xff", os.O_CREAT | os.O_WRONLY))
    (tmp_path / "good").write_text("")
    assert [fields[0] for fields in list_dir(str(tmp_path), 1)] == ["good"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_daemon_sends_protobufs_bytes(envd: Daemon, mixed: Path, binary: bool) -> None:
    # upb seeds its map hashing per process, so a map of two keys may come out
    # in either order from another process (it did before wire.py as well).
    os.removexattr(mixed / "f", "user.e2b.second")
    request = pb.ListDirRequest(path=str(mixed), depth=3)
    message = Listing(list_dir(str(mixed), 3)).to_message()
    if binary:
        body, expected = request.SerializeToString(), message.SerializeToString()
    else:
        body, expected = CompactJSONCodec().encode(request), expected_json(message)
    kind = "proto" if binary else "json"
    for encoding in ("identity", "gzip"):
        r = httpx.post(
            envd.url + LIST_DIR,
            content=body,
            headers={"content-type": f"application/{kind}", "accept-encoding": encoding},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == f"application/{kind}"
        assert r.content == expected  # httpx inflates gzip
        assert len(message.entries) > 25


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_daemon_big_listing_gzipped_in_thread(envd: Daemon, tmp_path: Path, binary: bool) -> None:
    # Big enough for the worker thread to gzip it (service.PRECOMPRESS_BYTES):
    # the inflated body is still exactly protobuf's.
    for i in range(1500):
        (tmp_path / f"entry-{i:04d}-{'é' * (i % 3)}").write_text("x" * (i % 7))
    request = pb.ListDirRequest(path=str(tmp_path), depth=1)
    message = Listing(list_dir(str(tmp_path), 1)).to_message()
    if binary:
        body, expected = request.SerializeToString(), message.SerializeToString()
    else:
        body, expected = CompactJSONCodec().encode(request), expected_json(message)
    assert len(expected) > PRECOMPRESS_BYTES
    kind = "proto" if binary else "json"
    for accept in ("gzip", "br, gzip", "identity"):
        r = httpx.post(
            envd.url + LIST_DIR,
            content=body,
            headers={"content-type": f"application/{kind}", "accept-encoding": accept},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-encoding"] == ("identity" if accept == "identity" else "gzip")
        assert r.content == expected
