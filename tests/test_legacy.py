"""The legacy layer: old response shapes for clients whose user agent is `connect-python`.

Raw Connect requests against a real daemon, JSON and binary, on every filesystem
RPC; responses are decoded with the CURRENT schema, so a newer field that leaked
through would show up.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from envd.gen.filesystem import filesystem_pb2 as pb
from envd.gen.legacy import filesystem_pb2 as old
from envd.gen.process import process_pb2 as ppb
from envd.rpc.codec import CompactJSONCodec
from envd.services.filesystem.legacy import to_legacy
from tests.connect_raw import raw_frames
from tests.daemon import Daemon

SERVICE = "/filesystem.Filesystem/"
LEGACY = {"User-Agent": "connect-python"}
ENTRY_FIELDS = {"name", "type", "path"}
EVENT_FIELDS = {"name", "type"}


def unary(
    url: str,
    method: str,
    request: Message,
    binary: bool,
    *,
    headers: dict[str, str] | None = None,
    service: str = SERVICE,
) -> tuple[httpx.Response, Any]:
    """A unary call with either codec: (response, body as JSON dict or raw bytes)."""
    if binary:
        content = request.SerializeToString()
        content_type = "application/proto"
    else:
        content = json_format.MessageToJson(request).encode()
        content_type = "application/json"
    r = httpx.post(
        url + service + method,
        content=content,
        headers={"Content-Type": content_type, **(headers or {})},
        timeout=30,
    )
    return r, (r.content if binary and r.status_code == 200 else r.json())


def fields(message: Message) -> set[str]:
    return {f.name for f, _ in message.ListFields()}


def assert_entry_reduced_json(entry: dict[str, Any]) -> None:
    assert set(entry) <= ENTRY_FIELDS, entry
    assert {"name", "path"} <= set(entry), entry


def assert_entry_reduced_proto(entry: pb.EntryInfo) -> None:
    assert fields(entry) <= ENTRY_FIELDS, entry
    assert {"name", "path"} <= fields(entry), entry


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("hello")
    (tmp_path / "b.txt").write_text("world!")
    return tmp_path


# --- unary RPCs ---------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_stat_reduced_and_marked(envd: Daemon, tree: Path, binary: bool) -> None:
    request = pb.StatRequest(path=str(tree / "b.txt"))
    full, full_body = unary(envd.url, "Stat", request, binary)
    legacy, body = unary(envd.url, "Stat", request, binary, headers=LEGACY)
    assert full.status_code == legacy.status_code == 200
    assert "x-e2b-legacy-sdk" not in full.headers
    assert legacy.headers["x-e2b-legacy-sdk"] == "true"
    if binary:
        new = pb.StatResponse.FromString(full_body).entry
        entry = pb.StatResponse.FromString(body).entry
        assert new.size == 6
        assert new.permissions
        assert_entry_reduced_proto(entry)
        assert (entry.name, entry.type, entry.path) == (new.name, new.type, new.path)
    else:
        assert full_body["entry"]["size"] == "6"
        assert body == {
            "entry": {"name": "b.txt", "type": "FILE_TYPE_FILE", "path": str(tree / "b.txt")}
        }


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_make_dir_reduced(envd: Daemon, tmp_path: Path, binary: bool) -> None:
    target = tmp_path / "made" / "deep"
    r, body = unary(
        envd.url, "MakeDir", pb.MakeDirRequest(path=str(target)), binary, headers=LEGACY
    )
    assert r.status_code == 200
    assert r.headers["x-e2b-legacy-sdk"] == "true"
    assert target.is_dir()
    if binary:
        entry = pb.MakeDirResponse.FromString(body).entry
        assert_entry_reduced_proto(entry)
        assert (entry.name, entry.type) == ("deep", pb.FILE_TYPE_DIRECTORY)
    else:
        assert body == {
            "entry": {"name": "deep", "type": "FILE_TYPE_DIRECTORY", "path": str(target)}
        }


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_move_reduced(envd: Daemon, tree: Path, binary: bool) -> None:
    request = pb.MoveRequest(source=str(tree / "b.txt"), destination=str(tree / "c.txt"))
    r, body = unary(envd.url, "Move", request, binary, headers=LEGACY)
    assert r.status_code == 200
    assert r.headers["x-e2b-legacy-sdk"] == "true"
    assert (tree / "c.txt").read_text() == "world!"
    if binary:
        entry = pb.MoveResponse.FromString(body).entry
        assert_entry_reduced_proto(entry)
        assert entry.path == str(tree / "c.txt")
    else:
        assert body == {
            "entry": {"name": "c.txt", "type": "FILE_TYPE_FILE", "path": str(tree / "c.txt")}
        }


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_list_dir_reduced(envd: Daemon, tree: Path, binary: bool) -> None:
    # JSON listings normally go through the hand-built encoder (wire.py); the
    # legacy shape must not.
    request = pb.ListDirRequest(path=str(tree), depth=2)
    _full, full_body = unary(envd.url, "ListDir", request, binary)
    r, body = unary(envd.url, "ListDir", request, binary, headers=LEGACY)
    assert r.status_code == 200
    assert r.headers["x-e2b-legacy-sdk"] == "true"
    expected = [
        ("b.txt", str(tree / "b.txt")),
        ("sub", str(tree / "sub")),
        ("a.txt", str(tree / "sub" / "a.txt")),
    ]
    if binary:
        assert all(e.size for e in pb.ListDirResponse.FromString(full_body).entries[:1])
        entries = pb.ListDirResponse.FromString(body).entries
        for entry in entries:
            assert_entry_reduced_proto(entry)
        assert [(e.name, e.path) for e in entries] == expected
    else:
        assert "permissions" in full_body["entries"][0]
        for entry in body["entries"]:
            assert_entry_reduced_json(entry)
        assert [(e["name"], e["path"]) for e in body["entries"]] == expected
        assert [e["type"] for e in body["entries"]] == [
            "FILE_TYPE_FILE",
            "FILE_TYPE_DIRECTORY",
            "FILE_TYPE_FILE",
        ]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_list_dir_empty(envd: Daemon, tmp_path: Path, binary: bool) -> None:
    r, body = unary(
        envd.url, "ListDir", pb.ListDirRequest(path=str(tmp_path)), binary, headers=LEGACY
    )
    assert r.status_code == 200
    assert r.headers["x-e2b-legacy-sdk"] == "true"
    assert body == (b"" if binary else {})


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_remove_empty_and_marked(envd: Daemon, tree: Path, binary: bool) -> None:
    r, body = unary(
        envd.url, "Remove", pb.RemoveRequest(path=str(tree / "sub")), binary, headers=LEGACY
    )
    assert r.status_code == 200
    assert r.headers["x-e2b-legacy-sdk"] == "true"
    assert body == (b"" if binary else {})
    assert not (tree / "sub").exists()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_polling_watcher_reduced(envd: Daemon, tmp_path: Path, binary: bool) -> None:
    create = pb.CreateWatcherRequest(path=str(tmp_path), include_entry=True)
    r, body = unary(envd.url, "CreateWatcher", create, binary, headers=LEGACY)
    assert r.status_code == 200
    assert r.headers["x-e2b-legacy-sdk"] == "true"
    if binary:
        watcher_id = pb.CreateWatcherResponse.FromString(body).watcher_id
    else:
        assert set(body) == {"watcherId"}
        watcher_id = body["watcherId"]
    try:
        (tmp_path / "new.txt").write_text("x")
        poll = pb.GetWatcherEventsRequest(watcher_id=watcher_id)
        events: list[tuple[str, int]] = []
        for _ in range(200):
            r, body = unary(envd.url, "GetWatcherEvents", poll, binary, headers=LEGACY)
            assert r.status_code == 200
            assert r.headers["x-e2b-legacy-sdk"] == "true"
            if binary:
                got = pb.GetWatcherEventsResponse.FromString(body).events
                for event in got:
                    assert fields(event) <= EVENT_FIELDS
                events += [(e.name, e.type) for e in got]
            else:
                for event in body.get("events", []):
                    assert set(event) <= EVENT_FIELDS, event  # no `entry`
                events += [
                    (e["name"], pb.EventType.Value(e["type"])) for e in body.get("events", [])
                ]
            if ("new.txt", pb.EVENT_TYPE_CREATE) in events:
                break
            httpx.get(envd.url + "/health")  # a short pause that also checks liveness
        assert ("new.txt", pb.EVENT_TYPE_CREATE) in events
    finally:
        remove = pb.RemoveWatcherRequest(watcher_id=watcher_id)
        r, body = unary(envd.url, "RemoveWatcher", remove, binary, headers=LEGACY)
    assert r.status_code == 200
    assert r.headers["x-e2b-legacy-sdk"] == "true"
    assert body == (b"" if binary else {})


# --- the WatchDir stream ------------------------------------------------------


def open_watch(
    client: httpx.Client,
    url: str,
    request: pb.WatchDirRequest,
    binary: bool,
    headers: dict[str, str],
) -> Any:
    payload = request.SerializeToString() if binary else json_format.MessageToJson(request).encode()
    return client.stream(
        "POST",
        url + SERVICE + "WatchDir",
        content=struct.pack(">BI", 0, len(payload)) + payload,
        headers={
            "Content-Type": "application/connect+" + ("proto" if binary else "json"),
            "Connect-Timeout-Ms": "30000",
            **headers,
        },
        timeout=httpx.Timeout(30, read=30),
    )


def decode_watch(payload: bytes, binary: bool) -> tuple[str, dict[str, Any]]:
    """(oneof case, its content as a JSON-like dict) of a WatchDirResponse frame."""
    if binary:
        message = pb.WatchDirResponse.FromString(payload)
        case = message.WhichOneof("event")
        inner = getattr(message, case)
        return case, json_format.MessageToDict(inner)
    data = json.loads(payload)
    assert len(data) == 1, data
    ((case, inner),) = data.items()
    return case, inner


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_watch_dir_stream_reduced(envd: Daemon, tmp_path: Path, binary: bool) -> None:
    request = pb.WatchDirRequest(path=str(tmp_path), include_entry=True)
    headers = {**LEGACY, "Keepalive-Ping-Interval": "1"}
    seen: list[tuple[str, dict[str, Any]]] = []
    with httpx.Client() as client, open_watch(client, envd.url, request, binary, headers) as r:
        assert r.status_code == 200
        assert r.headers["x-e2b-legacy-sdk"] == "true"
        for flags, payload in raw_frames(r):
            assert flags == 0, payload  # the stream must not end
            case, inner = decode_watch(payload, binary)
            seen.append((case, inner))
            if len(seen) == 1:
                assert (case, inner) == ("start", {})
                (tmp_path / "f.txt").write_text("data")
            if case == "filesystem":
                assert set(inner) <= EVENT_FIELDS, inner  # no `entry`, though asked for
            if case == "keepalive":
                assert inner == {}
            cases = {c for c, _ in seen}
            if "keepalive" in cases and {"name": "f.txt", "type": "EVENT_TYPE_CREATE"} in [
                i for c, i in seen if c == "filesystem"
            ]:
                break


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_watch_dir_full_shape_without_legacy_agent(
    envd: Daemon, tmp_path: Path, binary: bool
) -> None:
    # The counterpart: the same request from a current client keeps `entry`.
    request = pb.WatchDirRequest(path=str(tmp_path), include_entry=True)
    with httpx.Client() as client, open_watch(client, envd.url, request, binary, {}) as r:
        assert "x-e2b-legacy-sdk" not in r.headers
        for flags, payload in raw_frames(r):
            assert flags == 0, payload
            case, inner = decode_watch(payload, binary)
            if case == "start":
                (tmp_path / "f.txt").write_text("data")
            elif case == "filesystem" and inner["type"] == "EVENT_TYPE_CREATE":
                assert inner["entry"]["name"] == "f.txt"
                assert "permissions" in inner["entry"]
                break


# --- errors and scope ----------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_unary_errors_pass_through(envd: Daemon, tmp_path: Path, binary: bool) -> None:
    for method, request in [
        ("Stat", pb.StatRequest(path=str(tmp_path / "missing"))),
        ("ListDir", pb.ListDirRequest(path=str(tmp_path / "missing"))),
        ("MakeDir", pb.MakeDirRequest(path=str(tmp_path))),
        ("GetWatcherEvents", pb.GetWatcherEventsRequest(watcher_id="wnope")),
        ("RemoveWatcher", pb.RemoveWatcherRequest(watcher_id="wnope")),
    ]:
        plain, plain_body = unary(envd.url, method, request, binary)
        legacy, body = unary(envd.url, method, request, binary, headers=LEGACY)
        assert legacy.status_code == plain.status_code != 200, method
        assert body == plain_body, method
        assert body["code"], method
        assert body["message"], method
        # As upstream, only successful unary responses are marked.
        assert "x-e2b-legacy-sdk" not in legacy.headers, method


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_stream_error_passes_through(envd: Daemon, tmp_path: Path, binary: bool) -> None:
    request = pb.WatchDirRequest(path=str(tmp_path / "missing"))
    ends = []
    with httpx.Client() as client:
        for headers in ({}, LEGACY):
            with open_watch(client, envd.url, request, binary, headers) as r:
                frames = list(raw_frames(r))
                legacy_header = r.headers.get("x-e2b-legacy-sdk")
            assert [flags for flags, _ in frames] == [2]
            ends.append((json.loads(frames[0][1]), legacy_header))
    (plain_end, plain_header), (legacy_end, header) = ends
    assert legacy_end == plain_end
    assert legacy_end["error"]["code"] == "not_found"
    # Streams are marked before the handler runs, as upstream.
    assert (plain_header, header) == (None, "true")


@pytest.mark.parametrize(
    "agent", ["connect-python/0.4.2", "Connect-Python", "connect-pythonx", "e2b-python-sdk/2.6"]
)
def test_other_user_agents_get_current_shapes(envd: Daemon, tree: Path, agent: str) -> None:
    r, body = unary(
        envd.url,
        "Stat",
        pb.StatRequest(path=str(tree / "b.txt")),
        False,
        headers={"User-Agent": agent},
    )
    assert r.status_code == 200
    assert "x-e2b-legacy-sdk" not in r.headers
    assert body["entry"]["size"] == "6"
    assert "permissions" in body["entry"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "proto"])
def test_process_service_not_affected(envd: Daemon, binary: bool) -> None:
    r, body = unary(
        envd.url, "List", ppb.ListRequest(), binary, headers=LEGACY, service="/process.Process/"
    )
    assert r.status_code == 200
    assert "x-e2b-legacy-sdk" not in r.headers
    start = ppb.StartRequest(process=ppb.ProcessConfig(cmd="/bin/echo", args=["hi"]))
    payload = start.SerializeToString() if binary else json_format.MessageToJson(start).encode()
    r = httpx.post(
        envd.url + "/process.Process/Start",
        content=struct.pack(">BI", 0, len(payload)) + payload,
        headers={
            "Content-Type": "application/connect+" + ("proto" if binary else "json"),
            **LEGACY,
        },
        timeout=30,
    )
    assert r.status_code == 200
    assert "x-e2b-legacy-sdk" not in r.headers
    body = r.content
    events = []
    while body:
        flags, size = struct.unpack(">BI", body[:5])
        if flags == 0:
            events.append(body[5 : 5 + size])
        body = body[5 + size :]
    first = (
        ppb.StartResponse.FromString(events[0])
        if binary
        else json_format.Parse(events[0], ppb.StartResponse())
    )
    assert first.event.start.pid > 0


def test_plain_routes_not_affected(envd: Daemon) -> None:
    r = httpx.get(envd.url + "/envs", headers=LEGACY, timeout=30)
    assert r.status_code == 200
    assert "x-e2b-legacy-sdk" not in r.headers


# --- units ----------------------------------------------------------------------


def test_symlink_type_travels_as_a_number_in_json() -> None:
    # The old enum has no FILE_TYPE_SYMLINK; protojson then writes the number.
    reduced = to_legacy(pb.StatResponse(entry=pb.EntryInfo(name="l", type=pb.FILE_TYPE_SYMLINK)))
    assert isinstance(reduced, old.StatResponse)
    assert json.loads(CompactJSONCodec().encode(reduced)) == {"entry": {"name": "l", "type": 3}}


def test_every_filesystem_response_has_a_legacy_shape() -> None:
    outputs = {m.output_type.name for m in pb.DESCRIPTOR.services_by_name["Filesystem"].methods}
    for name in outputs:
        reduced = to_legacy(getattr(pb, name)())
        assert reduced.DESCRIPTOR.full_name == f"legacyfilesystem.{name}", name


def test_absent_entry_stays_absent() -> None:
    assert not to_legacy(pb.StatResponse()).HasField("entry")
    assert to_legacy(pb.StatResponse(entry=pb.EntryInfo())).HasField("entry")


def test_other_messages_untouched() -> None:
    message = ppb.ListResponse()
    assert to_legacy(message) is message
