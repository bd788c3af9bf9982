"""The wire-ready output event encodes exactly as protobuf's own encoders would."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from envd.gen.process import process_pb2 as pb
from envd.rpc.codec import CompactJSONCodec
from envd.services.process.wire import DataChunk

# Lengths around every varint boundary the header can cross.
SIZES = [0, 1, 100, 121, 122, 127, 128, 16377, 16380, 16383, 16384, (1 << 21) - 8, 1 << 21]


@pytest.mark.parametrize("member", ["stdout", "stderr", "pty"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("wrapper", [pb.StartResponse, pb.ConnectResponse])
def test_binary_matches_protobuf(member: str, size: int, wrapper: type) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = wrapper(event=pb.ProcessEvent(data=pb.ProcessEvent.DataEvent(**{member: data})))
    assert DataChunk(member, data).SerializeToString() == expected.SerializeToString()


@pytest.mark.parametrize("member", ["stdout", "stderr", "pty"])
@pytest.mark.parametrize("size", [0, 1, 2, 3, 1000, 65536])
def test_json_matches_protojson(member: str, size: int) -> None:
    data = bytes((i * 7) % 256 for i in range(size))
    ours = CompactJSONCodec().encode(DataChunk(member, data))  # type: ignore[arg-type]
    expected = pb.StartResponse(
        event=pb.ProcessEvent(data=pb.ProcessEvent.DataEvent(**{member: data}))
    )
    assert json.loads(ours) == json_format.MessageToDict(expected)
    parsed = json_format.Parse(ours, pb.StartResponse())
    assert getattr(parsed.event.data, member) == data
