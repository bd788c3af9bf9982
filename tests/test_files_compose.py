"""`POST /files/compose` over plain HTTP."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon import Daemon


@pytest.fixture(scope="module")
def client(envd: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=envd.url, timeout=60) as c:
        yield c


def compose(client: httpx.Client, body: object) -> httpx.Response:
    return client.post("/files/compose", json=body)


def assert_json_error(r: httpx.Response, status: int, message: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    assert r.json() == {"code": status, "message": message}


@pytest.fixture
def parts(tmp_path: Path) -> list[Path]:
    paths = []
    for i, data in enumerate([b"alpha-", os.urandom(3 << 20), b"-omega"]):
        path = tmp_path / f"part{i}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_compose_concatenates_then_deletes_sources(
    client: httpx.Client, tmp_path: Path, parts: list[Path]
) -> None:
    expected = b"".join(p.read_bytes() for p in parts)
    dest = tmp_path / "out" / "joined.bin"
    r = compose(
        client,
        {"source_paths": [str(p) for p in parts], "destination": str(dest), "username": "user"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.content == f'{{"name":"joined.bin","path":"{dest}","type":"file"}}\n'.encode()
    assert dest.read_bytes() == expected
    st = dest.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1001, 1001, 0o644)
    assert (tmp_path / "out").stat().st_uid == 1001
    assert not any(p.exists() for p in parts)
    assert sorted(os.listdir(dest.parent)) == ["joined.bin"]


def test_compose_replaces_an_existing_destination(
    client: httpx.Client, tmp_path: Path, parts: list[Path]
) -> None:
    dest = tmp_path / "dest"
    dest.write_bytes(b"old")
    r = compose(client, {"Source_Paths": [str(parts[0])], "DESTINATION": str(dest), "extra": 1})
    assert r.status_code == 200
    assert dest.read_bytes() == b"alpha-"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "invalid request body: EOF"),
        (b"{", "invalid request body: unexpected EOF"),
        (
            b'{"source_paths":"x","destination":"d"}',
            "invalid request body: json: cannot unmarshal string into Go struct field "
            "ComposeRequest.source_paths of type []string",
        ),
        (
            b'{"source_paths":[1],"destination":"d"}',
            "invalid request body: json: cannot unmarshal number into Go struct field "
            "ComposeRequest.source_paths of type string",
        ),
        (b'{"destination":"d"}', "source_paths must not be empty"),
        (b"null", "source_paths must not be empty"),
        (b'{"source_paths":["a"]}', "destination is required"),
        (b'{"source_paths":["a"],"destination":""}', "destination is required"),
    ],
)
def test_bad_requests(client: httpx.Client, body: bytes, message: str) -> None:
    r = client.post("/files/compose", content=body)
    assert_json_error(r, 400, message)


def test_source_errors(client: httpx.Client, tmp_path: Path, parts: list[Path]) -> None:
    dest = str(tmp_path / "d")
    r = compose(client, {"source_paths": [str(parts[0]), "/nope/x"], "destination": dest})
    assert_json_error(r, 404, "source file not found: /nope/x")
    r = compose(client, {"source_paths": [str(tmp_path)], "destination": dest})
    assert_json_error(r, 400, f"source path is not a regular file: {tmp_path}")
    r = compose(client, {"source_paths": [dest], "destination": dest})
    assert_json_error(r, 400, f'source path "{dest}" cannot be the same as destination')
    r = compose(client, {"source_paths": ["~bob/x"], "destination": dest})
    assert_json_error(
        r,
        400,
        "error resolving source path \"~bob/x\": failed to expand path '~bob/x' "
        "for user 'root': cannot expand user-specific home dir",
    )
    r = compose(client, {"source_paths": [str(parts[0])], "destination": dest, "username": "x-y"})
    assert_json_error(r, 401, "error looking up user 'x-y': user: unknown user x-y")
    assert all(p.exists() for p in parts)
    assert not Path(dest).exists()


@pytest.mark.parametrize("spelling", ["{d}/./same", "{d}/link", "{d}/hardlink"])
def test_destination_spelled_differently_is_refused_not_deleted(
    client: httpx.Client, tmp_path: Path, spelling: str
) -> None:
    dest = tmp_path / "same"
    dest.write_bytes(b"must survive")
    (tmp_path / "link").symlink_to(dest)
    os.link(dest, tmp_path / "hardlink")
    source = spelling.format(d=tmp_path)
    r = compose(client, {"source_paths": [source], "destination": str(dest)})
    assert_json_error(r, 400, f'source path "{source}" cannot be the same as destination')
    assert dest.read_bytes() == b"must survive"


def test_destination_that_is_a_directory_fails_cleanly(
    client: httpx.Client, tmp_path: Path, parts: list[Path]
) -> None:
    dest = tmp_path / "adir"
    dest.mkdir()
    r = compose(client, {"source_paths": [str(parts[0])], "destination": str(dest)})
    assert r.status_code == 500
    message = r.json()["message"]
    assert message.startswith(f"error finalizing compose: rename {dest}.e2b-compose.")
    assert message.endswith(f".tmp {dest}: file exists")
    assert parts[0].exists()
    assert sorted(os.listdir(tmp_path)) == ["adir", "part0", "part1", "part2"]


def test_parent_that_is_a_file_is_500(
    client: httpx.Client, tmp_path: Path, parts: list[Path]
) -> None:
    r = compose(client, {"source_paths": [str(parts[0])], "destination": f"{parts[1]}/x"})
    assert_json_error(r, 500, f"error ensuring directories: path is a file: {parts[1]}")


def test_enospc_is_507_and_keeps_sources(client: httpx.Client, tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        sources = []
        for i in range(3):
            path = mount / f"s{i}"
            path.write_bytes(os.urandom(1 << 20))
            sources.append(str(path))
        r = compose(client, {"source_paths": sources * 2, "destination": str(mount / "all")})
        assert_json_error(r, 507, "not enough disk space available")
        assert sorted(os.listdir(mount)) == ["s0", "s1", "s2"]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_compose_requires_post(client: httpx.Client) -> None:
    r = client.put("/files/compose")
    assert (r.status_code, r.headers.get_list("allow")) == (405, ["POST"])
