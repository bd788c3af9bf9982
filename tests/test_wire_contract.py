"""Our proto files are wire-identical to what the published e2b SDK ships.

The SDK embeds the upstream descriptors (as protobuf-py code); we parse them
into Google's descriptor protos and compare every message, field, enum and
method both sides define.
"""

from __future__ import annotations

import pytest
from e2b.envd.filesystem import filesystem_pb as sdk_filesystem
from e2b.envd.process import process_pb as sdk_process
from google.protobuf import descriptor_pb2

from envd.gen.filesystem import filesystem_pb2
from envd.gen.process import process_pb2


def _ours(module: object) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)  # type: ignore[attr-defined]
    return proto


def _sdk(module: object) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(module.desc().proto.to_binary())  # type: ignore[attr-defined]


def _messages(
    proto: descriptor_pb2.FileDescriptorProto,
) -> dict[str, descriptor_pb2.DescriptorProto]:
    out: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for m in messages:
            name = f"{prefix}.{m.name}"
            out[name] = m
            walk(name, list(m.nested_type))

    walk(proto.package, list(proto.message_type))
    return out


def _field_sig(
    f: descriptor_pb2.FieldDescriptorProto, m: descriptor_pb2.DescriptorProto
) -> tuple[object, ...]:
    oneof = m.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None
    # json_name is derived from the name (compared) and is absent from CopyToProto output.
    return (f.number, f.type, f.label, f.type_name, f.proto3_optional, oneof)


PAIRS = [(process_pb2, sdk_process), (filesystem_pb2, sdk_filesystem)]


@pytest.mark.parametrize(("ours", "sdk"), PAIRS, ids=["process", "filesystem"])
def test_same_package_and_file(ours: object, sdk: object) -> None:
    a, b = _ours(ours), _sdk(sdk)
    assert (a.name, a.package, a.syntax) == (b.name, b.package, b.syntax)


@pytest.mark.parametrize(("ours", "sdk"), PAIRS, ids=["process", "filesystem"])
def test_messages_and_fields_match(ours: object, sdk: object) -> None:
    a, b = _messages(_ours(ours)), _messages(_sdk(sdk))
    assert set(a) == set(b)
    for name in a:
        fields_a = {f.name: _field_sig(f, a[name]) for f in a[name].field}
        fields_b = {f.name: _field_sig(f, b[name]) for f in b[name].field}
        assert fields_a == fields_b, name


@pytest.mark.parametrize(("ours", "sdk"), PAIRS, ids=["process", "filesystem"])
def test_enums_match(ours: object, sdk: object) -> None:
    def enums(p: descriptor_pb2.FileDescriptorProto) -> dict[str, dict[str, int]]:
        return {e.name: {v.name: v.number for v in e.value} for e in p.enum_type}

    assert enums(_ours(ours)) == enums(_sdk(sdk))


@pytest.mark.parametrize(("ours", "sdk"), PAIRS, ids=["process", "filesystem"])
def test_services_match(ours: object, sdk: object) -> None:
    def methods(p: descriptor_pb2.FileDescriptorProto) -> dict[str, tuple[object, ...]]:
        return {
            f"{s.name}/{m.name}": (
                m.input_type,
                m.output_type,
                m.client_streaming,
                m.server_streaming,
            )
            for s in p.service
            for m in s.method
        }

    assert methods(_ours(ours)) == methods(_sdk(sdk))
