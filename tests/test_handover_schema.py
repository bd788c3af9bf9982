"""Our handover schema is upstream's, field for field, and blobs cross in both directions.

`tests/data/upstream-handover.binpb` is compiled from upstream's own .proto files
(scripts/upstream-descriptors.py); it is loaded into a separate descriptor pool, so
its message classes share nothing with ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from envd.gen.filesystem import filesystem_pb2
from envd.gen.process import process_pb2
from envd.gen.upgrade import handover_pb2
from envd.upgrade import schema

DATA = Path(__file__).parent / "data" / "upstream-handover.binpb"


def _upstream_set() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(DATA.read_bytes())


def _upstream_class(full_name: str) -> Any:
    pool = descriptor_pool.DescriptorPool()
    for file in _upstream_set().file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def _ours(module: Any) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)
    return proto


def _messages(file: descriptor_pb2.FileDescriptorProto) -> dict[str, dict[str, tuple[Any, ...]]]:
    out: dict[str, dict[str, tuple[Any, ...]]] = {}

    def walk(prefix: str, messages: Any) -> None:
        for m in messages:
            name = f"{prefix}.{m.name}"
            out[name] = {
                f.name: (
                    f.number,
                    f.type,
                    f.label,
                    f.type_name.lstrip("."),
                    f.proto3_optional,
                    m.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None,
                )
                for f in m.field
            }
            walk(name, m.nested_type)

    walk(file.package, file.message_type)
    return out


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("upgrade/handover.proto", handover_pb2),
        ("process/process.proto", process_pb2),
        ("filesystem/filesystem.proto", filesystem_pb2),
    ],
)
def test_schema_is_upstreams(name: str, module: Any) -> None:
    upstream = {f.name: f for f in _upstream_set().file}[name]
    ours = _ours(module)
    assert (ours.name, ours.package, ours.syntax) == (upstream.name, upstream.package, "proto3")
    assert list(ours.dependency) == list(upstream.dependency)
    mine, theirs = _messages(ours), _messages(upstream)
    assert set(mine) == set(theirs)
    for message, fields in theirs.items():
        extra = set(mine[message]) - set(fields)
        # Newer upstream envd added it (our filesystem.proto follows the SDK); an
        # older reader keeps it as an unknown field.
        assert extra <= ({"is_symlink"} if message == "filesystem.EntryInfo" else set()), message
        assert {k: mine[message][k] for k in fields} == fields, message


def _full_state() -> handover_pb2.HandoverState:
    state = handover_pb2.HandoverState(schema=2, from_ver="0.6.13")
    config = process_pb2.ProcessConfig(cmd="/bin/bash", args=["-l"], envs={"A": "1"}, cwd="/tmp")
    state.processes.add(
        pid=1234,
        tag="t",
        has_tag=True,
        cg_type="pty",
        config=config,
        stdout_fd=-1,
        stderr_fd=-1,
        stdin_fd=-1,
        tty_fd=203,
        timeout_ms=5000,
    )
    state.processes.add(pid=1235, cg_type="user", stdout_fd=205, stderr_fd=206, stdin_fd=207)
    end = process_pb2.ProcessEvent.EndEvent(exit_code=3, exited=True, status="exit status 3")
    state.terminated.add(pid=99, tag="", has_tag=True, end=end, remaining_ms=12000)
    event = filesystem_pb2.FilesystemEvent(name="a.txt", type=filesystem_pb2.EVENT_TYPE_CREATE)
    event.entry.name = "a.txt"
    event.entry.size = 7
    state.watchers.add(
        id="wabc", path="/tmp/x", recursive=True, include_entry_info=True, pending_events=[event]
    )
    state.mounts.add(path="/mnt/v", lifecycle_id="life-1")
    state.forwards.add(key="77-8080", port=8080, listener_pid=77, family=4, socat_pid=78)
    state.guest_frozen_cgroups.append("docker/abc")
    return state


def test_our_blob_decodes_with_upstream_schema() -> None:
    ours = _full_state()
    upstream = _upstream_class("upgrade.HandoverState").FromString(ours.SerializeToString())
    assert upstream.processes[0].tty_fd == 203
    assert upstream.processes[0].config.args == ["-l"]
    assert upstream.terminated[0].end.exit_code == 3
    assert upstream.watchers[0].pending_events[0].entry.size == 7
    assert upstream.forwards[0].socat_pid == 78
    assert list(upstream.guest_frozen_cgroups) == ["docker/abc"]
    # Re-encoding with upstream's classes gives the same bytes back.
    back = handover_pb2.HandoverState.FromString(upstream.SerializeToString())
    assert back == ours


def test_upstream_blob_decodes_with_ours() -> None:
    cls = _upstream_class("upgrade.HandoverState")
    blob = cls(schema=1, from_ver="0.6.12")
    proc = blob.processes.add(pid=10, stdout_fd=200, stderr_fd=201, stdin_fd=-1, tty_fd=-1)
    proc.config.cmd = "sleep"
    blob.terminated.add(pid=11, remaining_ms=1)
    decoded = schema.decode(blob.SerializeToString())
    assert decoded.processes[0].config.cmd == "sleep"
    assert decoded.processes[0].stdin_fd == -1
    assert decoded.terminated[0].remaining_ms == 1


def test_schema_stamp_and_refusal() -> None:
    state = _full_state()
    assert schema.stamp(state) == 2
    del state.guest_frozen_cgroups[:]
    assert schema.stamp(state) == 1
    state.schema = schema.MAX_SCHEMA + 1
    with pytest.raises(schema.HandoverError, match="exceeds max supported"):
        schema.decode(state.SerializeToString())
    with pytest.raises(schema.HandoverError, match="unmarshal handover"):
        schema.decode(b"\xff\xff\xff")
