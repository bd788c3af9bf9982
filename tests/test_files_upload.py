"""`POST /files` over plain HTTP: every status code, multipart edge cases,
gzip bodies, metadata limits, out-of-space, and failed uploads (in place as
upstream: an existing file keeps what was written, a new one is removed)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.daemon import Daemon

OCTET = {"Content-Type": "application/octet-stream"}
EXPECTED = "expected multipart/form-data or application/octet-stream"


@pytest.fixture(scope="module")
def client(envd: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=envd.url, timeout=60) as c:
        yield c


def post_raw(
    client: httpx.Client,
    path: str | None,
    body: bytes,
    headers: dict[str, str] | None = None,
    **params: str,
) -> httpx.Response:
    query = {"path": path, **params} if path is not None else params
    return client.post("/files", params=query, content=body, headers={**OCTET, **(headers or {})})


def post_multipart(
    client: httpx.Client, body: bytes, boundary: str = "BOUNDARY", **params: str
) -> httpx.Response:
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return client.post("/files", params=params, content=body, headers=headers)


def part(headers: str, data: bytes, boundary: str = "BOUNDARY") -> bytes:
    return f"--{boundary}\r\n{headers}\r\n\r\n".encode() + data + b"\r\n"


def end(boundary: str = "BOUNDARY") -> bytes:
    return f"--{boundary}--\r\n".encode()


def file_part(filename: str, data: bytes, extra: str = "") -> bytes:
    return part(f'Content-Disposition: form-data; name="file"; filename="{filename}"{extra}', data)


def assert_json_error(r: httpx.Response, status: int, message: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.json() == {"code": status, "message": message}
    assert r.content.endswith(b"}\n")


# --- raw uploads ---


def test_raw_upload_response_and_file(client: httpx.Client, tmp_path: Path) -> None:
    r = post_raw(client, str(tmp_path / "a" / "b.bin"), b"\x00raw\xff")
    assert r.status_code == 200
    assert r.content == (f'[{{"name":"b.bin","path":"{tmp_path}/a/b.bin","type":"file"}}]'.encode())
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00raw\xff"
    assert (tmp_path / "a" / "b.bin").stat().st_mode & 0o777 == 0o644


def test_raw_upload_requires_path(client: httpx.Client) -> None:
    assert_json_error(
        post_raw(client, None, b"x"), 400, "path query parameter is required for raw body upload"
    )


def test_raw_upload_of_empty_body(client: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.write_bytes(b"previous")
    assert post_raw(client, str(target), b"").status_code == 200
    assert target.read_bytes() == b""


def test_gzip_body(client: httpx.Client, tmp_path: Path) -> None:
    data = os.urandom(100_000) * 5
    two_members = gzip.compress(data[:1000]) + gzip.compress(data[1000:])
    r = post_raw(client, str(tmp_path / "gz"), two_members, {"Content-Encoding": "GZIP"})
    assert r.status_code == 200
    assert (tmp_path / "gz").read_bytes() == data


@pytest.mark.parametrize(
    ("encoding", "body", "detail"),
    [
        ("br", b"x", "unsupported Content-Encoding: br, supported: [gzip]"),
        ("gzip, identity", b"x", "unsupported Content-Encoding: gzip, identity, supported: [gzip]"),
        ("gzip", b"", "failed to create gzip reader: EOF"),
        ("gzip", b"\x1f\x8b", "failed to create gzip reader: unexpected EOF"),
        ("gzip", b"not gzip at all", "failed to create gzip reader: gzip: invalid header"),
    ],
)
def test_bad_request_encoding_is_400(
    client: httpx.Client, tmp_path: Path, encoding: str, body: bytes, detail: str
) -> None:
    r = post_raw(client, str(tmp_path / "x"), body, {"Content-Encoding": encoding})
    assert_json_error(r, 400, f"error decompressing request body: {detail}")
    assert not (tmp_path / "x").exists()


def test_identity_encoding_is_accepted(client: httpx.Client, tmp_path: Path) -> None:
    r = post_raw(client, str(tmp_path / "id"), b"plain", {"Content-Encoding": "identity; x=y"})
    assert r.status_code == 200
    assert (tmp_path / "id").read_bytes() == b"plain"


def test_corrupt_gzip_fails_and_a_new_file_is_removed(client: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_bytes(b"original")
    inode = target.stat().st_ino
    body = bytearray(gzip.compress(os.urandom(300_000)))
    body[-6] ^= 0xFF  # CRC mismatch, noticed at the very end
    r = post_raw(client, str(target), bytes(body), {"Content-Encoding": "gzip"})
    assert_json_error(r, 500, "error writing file: gzip: invalid checksum")
    truncated = gzip.compress(os.urandom(300_000))[:-100]
    r = post_raw(client, str(target), truncated, {"Content-Encoding": "gzip"})
    assert_json_error(r, 500, "error writing file: unexpected EOF")
    r = post_raw(client, str(tmp_path / "new.txt"), truncated, {"Content-Encoding": "gzip"})
    assert r.status_code == 500
    # Written in place, as upstream: the same inode, holding what was decoded.
    assert target.stat().st_ino == inode
    assert not (tmp_path / "new.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        (
            None,
            "unsupported content type: , " + EXPECTED,
        ),
        (
            "text/plain",
            "unsupported content type: text/plain, " + EXPECTED,
        ),
        (
            "application/json; x",
            "unsupported content type: application/json; x, " + EXPECTED,
        ),
    ],
)
def test_unsupported_content_type_is_400(
    client: httpx.Client, tmp_path: Path, content_type: str | None, message: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post("/files", params={"path": str(tmp_path / "x")}, content=b"x", headers=headers)
    if content_type is None:
        # httpx sends no Content-Type for raw bytes.
        assert "content-type" not in r.request.headers
    assert_json_error(r, 400, message)


def test_octet_stream_with_parameters_is_raw(client: httpx.Client, tmp_path: Path) -> None:
    r = client.post(
        "/files",
        params={"path": str(tmp_path / "p")},
        content=b"p",
        headers={"Content-Type": "Application/Octet-Stream; charset=binary"},
    )
    assert r.status_code == 200


# --- user, paths, ownership ---


def test_unknown_user_is_401(client: httpx.Client, tmp_path: Path) -> None:
    r = post_raw(client, str(tmp_path / "x"), b"x", username="ghost")
    assert_json_error(r, 401, "error looking up user 'ghost': user: unknown user ghost")


def test_bad_tilde_is_400(client: httpx.Client) -> None:
    r = post_raw(client, "~ghost/x", b"x")
    assert_json_error(
        r,
        400,
        "error resolving path: failed to expand path '~ghost/x' for user 'root': "
        "cannot expand user-specific home dir",
    )


def test_directory_target_and_file_parent(client: httpx.Client, tmp_path: Path) -> None:
    assert_json_error(
        post_raw(client, str(tmp_path), b"x"), 400, f"path is a directory: {tmp_path}"
    )
    (tmp_path / "file").write_bytes(b"")
    r = post_raw(client, str(tmp_path / "file" / "child"), b"x")
    assert_json_error(r, 500, f"error ensuring directories: path is a file: {tmp_path}/file")
    # A trailing slash: the "parent" is the path itself, which gets created (upstream quirk).
    r = post_raw(client, f"{tmp_path}/newdir/", b"x")
    assert_json_error(r, 400, f"path is a directory: {tmp_path}/newdir/")
    assert (tmp_path / "newdir").is_dir()


def test_symlink_target_is_followed_and_kept(client: httpx.Client, tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_bytes(b"old")
    link = tmp_path / "link.txt"
    link.symlink_to("real.txt")
    r = post_raw(client, str(link), b"through the link")
    assert r.json() == [{"name": "link.txt", "path": str(link), "type": "file"}]
    assert link.is_symlink()
    assert real.read_bytes() == b"through the link"
    dangling = tmp_path / "dangling"
    dangling.symlink_to("created-by-upload")
    assert post_raw(client, str(dangling), b"new").status_code == 200
    assert (tmp_path / "created-by-upload").read_bytes() == b"new"


def test_overwrite_keeps_mode_and_foreign_xattrs(client: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "x.sh"
    target.write_bytes(b"old")
    target.chmod(0o700)
    os.setxattr(target, "user.other", b"kept")
    os.setxattr(target, "user.e2b.stale", b"dropped")
    r = post_raw(client, str(target), b"new", username="user")
    assert r.status_code == 200
    st = target.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o700, 1001, 1001)
    assert os.getxattr(target, "user.other") == b"kept"
    assert "user.e2b.stale" not in os.listxattr(target)


def test_device_targets_are_written_in_place(client: httpx.Client) -> None:
    r = post_raw(client, "/dev/null", b"discarded")
    assert r.json() == [{"name": "null", "path": "/dev/null", "type": "file"}]
    assert Path("/dev/null").is_char_device()


# --- metadata ---


def test_metadata_headers(client: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "m"
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("X-Metadata-Zeta", "last"),
        ("x-metadata-alpha", "first"),
        ("X-METADATA-ALPHA", "ignored second value"),
        ("X-Metadata-", "empty key ignored"),
        ("X-Metadata-Empty", ""),
    ]
    r = client.post("/files", params={"path": str(target)}, content=b"m", headers=headers)
    assert r.content == (
        b'[{"metadata":{"alpha":"first","empty":"","zeta":"last"},'
        + f'"name":"m","path":"{target}","type":"file"}}]'.encode()
    )
    assert os.getxattr(target, "user.e2b.alpha") == b"first"


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        (
            {"X-Metadata-K": "caf\xe9"},
            'metadata value for key "k" contains non-printable-ASCII byte 0xe9 at offset 3',
        ),
        (
            {"X-Metadata-K": "a\tb"},
            'metadata value for key "k" contains non-printable-ASCII byte 0x09 at offset 1',
        ),
        ({"X-Metadata-" + "k" * 247: "v"}, f'metadata key "{"k" * 247}" exceeds 246 bytes'),
        (
            {f"X-Metadata-K{i}": "v" * 1000 for i in range(5)},
            "total metadata size 5055 exceeds 4096 bytes",
        ),
    ],
)
def test_invalid_metadata_is_400_before_anything_is_written(
    client: httpx.Client, tmp_path: Path, headers: dict[str, str], detail: str
) -> None:
    encoded = [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]
    r = client.post(
        "/files",
        params={"path": str(tmp_path / "m")},
        content=b"m",
        headers=[(b"Content-Type", b"application/octet-stream"), *encoded],
    )
    assert_json_error(r, 400, f"invalid metadata: {detail}")
    assert not (tmp_path / "m").exists()


def test_metadata_limits(client: httpx.Client, tmp_path: Path) -> None:
    key = "k" * 246
    r = post_raw(client, str(tmp_path / "limit"), b"x", {f"X-Metadata-{key}": "v" * 2000})
    assert r.status_code == 200, r.text
    assert r.json()[0]["metadata"] == {key: "v" * 2000}
    # 9 bytes of prefix count per key: 9 + 1 + 4087 = 4097.
    r = post_raw(client, str(tmp_path / "limit"), b"x", {"X-Metadata-k": "v" * 4087})
    assert_json_error(r, 400, "invalid metadata: total metadata size 4097 exceeds 4096 bytes")


# --- multipart ---


def test_multipart_files_and_other_parts(client: httpx.Client, tmp_path: Path) -> None:
    body = (
        file_part(f"{tmp_path}/one.txt", b"one\r\n--BOUNDAR")
        + part('Content-Disposition: form-data; name="other"; filename="x"', b"ignored")
        + part('Content-Disposition: form-data; name="FILE"; filename="y"', b"ignored")
        + part('Content-Disposition: attachment; name="file"; filename="z"', b"ignored")
        + part("Content-Type: text/plain", b"no disposition")
        + file_part(f"{tmp_path}/sub/two.txt", b"")
        + end()
    )
    r = post_multipart(client, b"preamble to skip\r\n" + body + b"epilogue")
    assert r.status_code == 200, r.text
    assert r.json() == [
        {"name": "one.txt", "path": f"{tmp_path}/one.txt", "type": "file"},
        {"name": "two.txt", "path": f"{tmp_path}/sub/two.txt", "type": "file"},
    ]
    assert (tmp_path / "one.txt").read_bytes() == b"one\r\n--BOUNDAR"
    assert (tmp_path / "sub/two.txt").read_bytes() == b""
    assert sorted(os.listdir(tmp_path)) == ["one.txt", "sub"]


def test_multipart_filename_is_a_full_path_resolved_for_the_user(client: httpx.Client) -> None:
    name = f"mp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        r = post_multipart(client, file_part(f"{name}/deep/f.txt", b"d") + end(), username="user")
        assert r.json()[0]["path"] == f"/home/user/{name}/deep/f.txt"
        assert Path(f"/home/user/{name}").stat().st_uid == 1001
    finally:
        subprocess.run(["rm", "-rf", f"/home/user/{name}"], check=True)


def test_multipart_filename_decoding(client: httpx.Client, tmp_path: Path) -> None:
    body = (
        file_part(f"{tmp_path}/pct%22.txt", b"a")
        + part(
            "Content-Disposition: form-data; name=file; "
            f"filename*=\"utf-8''{tmp_path}/%E6%96%87.txt\"",
            b"b",
        )
        + part(
            f'Content-Disposition: form-data; name="file"; filename="{tmp_path}/q\\"uote.txt"',
            b"c",
        )
        # Unparsable disposition (unquoted `/`): not a file part, skipped silently.
        + part(f"Content-Disposition: form-data; name=file; filename={tmp_path}/skip", b"d")
        + end()
    )
    r = post_multipart(client, body)
    assert [e["name"] for e in r.json()] == ["pct%22.txt", "文.txt", 'q"uote.txt']
    assert (tmp_path / "文.txt").read_bytes() == b"b"
    assert not (tmp_path / "skip").exists()


def test_quoted_printable_part_is_decoded(client: httpx.Client, tmp_path: Path) -> None:
    body = (
        file_part(
            f"{tmp_path}/qp.txt", b"a=3Db=\r\nc", "\r\nContent-Transfer-Encoding: quoted-printable"
        )
        + end()
    )
    assert post_multipart(client, body).status_code == 200
    assert (tmp_path / "qp.txt").read_bytes() == b"a=bc"


def test_path_parameter_overrides_filenames(client: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "chosen.txt"
    r = post_multipart(client, file_part("ignored/name", b"first") + end(), path=str(target))
    assert r.json() == [{"name": "chosen.txt", "path": str(target), "type": "file"}]
    # A second file part goes to the same path: 400, after the first was written.
    body = file_part("a", b"one") + file_part("b", b"two") + end()
    r = post_multipart(client, body, path=str(target))
    assert_json_error(
        r,
        400,
        f"you cannot upload multiple files to the same path '{target}' in one upload request, "
        "only the first specified file was uploaded",
    )
    assert target.read_bytes() == b"one"


def test_duplicate_destinations_list_the_other_uploads(
    client: httpx.Client, tmp_path: Path
) -> None:
    body = (
        file_part(f"{tmp_path}/a", b"a")
        + file_part(f"{tmp_path}/b", b"b")
        + file_part(f"{tmp_path}/c", b"c")
        + file_part(f"{tmp_path}/./b", b"b2")  # another spelling: a different path string
        + file_part(f"{tmp_path}/b", b"b3")
        + end()
    )
    r = post_multipart(client, body)
    assert_json_error(
        r,
        400,
        f"you cannot upload multiple files to the same path '{tmp_path}/b' in one upload "
        "request, only the first specified file was uploaded, also the following files were "
        f"uploaded: {tmp_path}/a, {tmp_path}/c, {tmp_path}/./b",
    )
    assert (tmp_path / "b").read_bytes() == b"b2"


def test_missing_filename_is_400(client: httpx.Client, tmp_path: Path) -> None:
    r = post_multipart(client, part('Content-Disposition: form-data; name="file"', b"x") + end())
    assert_json_error(
        r,
        400,
        "error getting multipart custom part file name: "
        "filename not found in Content-Disposition header",
    )


def test_no_file_parts_is_an_empty_list(client: httpx.Client) -> None:
    r = post_multipart(client, part('Content-Disposition: form-data; name="x"', b"x") + end())
    assert (r.status_code, r.content) == (200, b"[]")
    r = post_multipart(client, end())
    assert (r.status_code, r.content) == (200, b"[]")


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        ("multipart/mixed; boundary=B", "request Content-Type isn't multipart/form-data"),
        ("multipart/form-data", "no multipart boundary param in Content-Type"),
        ("multipart/form-data; boundary", "request Content-Type isn't multipart/form-data"),
    ],
)
def test_bad_multipart_content_type_is_500(
    client: httpx.Client, content_type: str, message: str
) -> None:
    r = client.post("/files", content=end("B"), headers={"Content-Type": content_type})
    assert_json_error(r, 500, f"error parsing multipart form: {message}")


def test_malformed_multipart_is_500_and_writes_nothing_partial(
    client: httpx.Client, tmp_path: Path
) -> None:
    target = tmp_path / "t.txt"
    target.write_bytes(b"intact")
    r = post_multipart(client, b"no boundary anywhere")
    assert_json_error(r, 500, "error reading form: multipart: NextPart: EOF")
    r = post_multipart(client, b"")
    assert_json_error(r, 500, "error reading form: multipart: NextPart: EOF")
    # Body ends inside a file part: the part is not committed.
    r = post_multipart(client, file_part(str(target), b"half")[:-2])
    assert_json_error(r, 500, "error writing file: unexpected EOF")
    # Complete first part, then the closing delimiter never comes.
    body = file_part(f"{tmp_path}/first.txt", b"first") + b"--BOUNDARY\r\nContent-Disp"
    r = post_multipart(client, body)
    assert_json_error(r, 500, "error reading form: multipart: NextPart: EOF")
    # In place, as upstream: the target holds a prefix of the part.
    assert b"half".startswith(target.read_bytes())
    assert (tmp_path / "first.txt").read_bytes() == b"first"  # earlier files stay, as upstream
    assert sorted(os.listdir(tmp_path)) == ["first.txt", "t.txt"]


def test_garbage_after_delimiter_is_500(client: httpx.Client, tmp_path: Path) -> None:
    r = post_multipart(client, b"--BOUNDARYxx\r\n\r\n")
    assert r.status_code == 500
    assert r.json()["message"].startswith("error reading form: multipart:")


def test_multipart_gzip_body(client: httpx.Client, tmp_path: Path) -> None:
    body = gzip.compress(file_part(f"{tmp_path}/z.txt", b"zipped") + end())
    r = client.post(
        "/files",
        content=body,
        headers={
            "Content-Type": "multipart/form-data; boundary=BOUNDARY",
            "Content-Encoding": "gzip",
        },
    )
    assert r.status_code == 200
    assert (tmp_path / "z.txt").read_bytes() == b"zipped"


# --- interrupted uploads ---


def _send_and_hang_up(envd: Daemon, path: Path, body: bytes, declared: int) -> None:
    with socket.create_connection(("127.0.0.1", envd.port)) as s:
        s.sendall(
            f"POST /files?path={path} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n".encode()
            + body
        )
        time.sleep(0.2)


def test_interrupted_upload_of_a_new_file_leaves_nothing(envd: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_bytes(b"precious content")
    data = os.urandom(3 << 20)
    _send_and_hang_up(envd, target, data, 10 << 20)
    _send_and_hang_up(envd, tmp_path / "new.bin", os.urandom(3 << 20), 10 << 20)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _daemon_idle(envd, tmp_path):
        time.sleep(0.05)
    # An existing file was truncated and written in place, as upstream.
    assert data.startswith(target.read_bytes())
    assert not (tmp_path / "new.bin").exists()
    assert sorted(os.listdir(tmp_path)) == ["precious.txt"]


def _daemon_idle(envd: Daemon, directory: Path) -> bool:
    """The daemon holds no file open in `directory`."""
    with contextlib.suppress(psutil.Error):
        files = psutil.Process(envd.pid).open_files()
        return not [f for f in files if f.path.startswith(str(directory))]
    return True


# --- out of space ---


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs with 16 inodes, mounted for the test and removed afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,nr_inodes=16", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_enospc_is_507_and_a_new_file_is_removed(client: httpx.Client, small_fs: Path) -> None:
    target = small_fs / "existing.bin"
    target.write_bytes(b"old" * 1000)
    big = os.urandom(3 << 20)
    r = post_raw(client, str(target), big)
    assert_json_error(
        r, 507, f"attempted to write {len(big)} bytes: not enough disk space available"
    )
    assert big.startswith(target.read_bytes())  # in place, as upstream
    target.unlink()

    def chunked() -> Iterator[bytes]:
        for _ in range(48):
            yield bytes(64 << 10)

    r = client.post(
        "/files", params={"path": str(small_fs / "new.bin")}, content=chunked(), headers=OCTET
    )
    assert_json_error(r, 507, "not enough disk space available")
    assert os.listdir(small_fs) == []
    # The space is free again: nothing leaked.
    assert post_raw(client, str(small_fs / "fits.bin"), bytes(1 << 20)).status_code == 200


def test_enospc_multipart_and_gzip(client: httpx.Client, small_fs: Path) -> None:
    body = file_part(f"{small_fs}/a.bin", bytes(3 << 20)) + end()
    r = post_multipart(client, body)
    assert_json_error(
        r, 507, f"attempted to write {len(body)} bytes: not enough disk space available"
    )
    compressed = gzip.compress(bytes(3 << 20))
    r = post_raw(client, str(small_fs / "z.bin"), compressed, {"Content-Encoding": "gzip"})
    assert_json_error(
        r, 507, f"attempted to write {len(compressed)} bytes: not enough disk space available"
    )
    assert os.listdir(small_fs) == []


def test_no_inodes_left_is_507(client: httpx.Client, small_fs: Path) -> None:
    n = 0
    with contextlib.suppress(OSError):
        while True:
            (small_fs / f"f{n}").touch()
            n += 1
    r = post_raw(client, str(small_fs / "one-more"), b"x")
    assert_json_error(
        r,
        507,
        f"not enough inodes available: open {small_fs}/one-more: no space left on device",
    )
    # Overwriting needs no new inode: the file is written in place, as upstream.
    r = post_raw(client, str(small_fs / "f0"), b"x")
    assert r.status_code == 200
    assert (small_fs / "f0").read_bytes() == b"x"


def test_response_is_json(client: httpx.Client, tmp_path: Path) -> None:
    r = post_raw(client, str(tmp_path / "j"), b"j")
    assert r.headers["content-type"] == "application/json"
    assert json.loads(r.content)[0]["type"] == "file"
