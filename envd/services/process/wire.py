"""Process output events in wire-ready form, without building protobuf messages.

An output chunk travels as `StartResponse{event: ProcessEvent{data:
DataEvent{<member>: bytes}}}` (`ConnectResponse` has the same layout). Setting
a bytes field on a upb message copies the chunk, and the JSON codec then
base64-encodes it with the stdlib at ~0.35 GB/s; together they capped output
far below the issue's goals. `DataChunk` encodes both forms directly: the
binary form is a few header bytes plus the chunk, the JSON form uses pybase64
(SIMD, tens of GB/s). tests/test_process_wire.py checks both against
protobuf's own encoders.
"""

from __future__ import annotations

import pybase64

from envd.rpc.codec import FAST_ENCODERS

_FIELD = {"stdout": 1, "stderr": 2, "pty": 3}
_JSON_PREFIX = {
    name: b'{"event":{"data":{"' + name.encode() + b'":"' for name in ("stdout", "stderr", "pty")
}
_JSON_SUFFIX = b'"}}}'


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class DataChunk:
    """One output chunk as a `StartResponse`/`ConnectResponse` data event.

    connectrpc's binary codec only calls `SerializeToString()`, and our JSON
    codec knows this type (see `encode_json`), so the stream handlers can
    yield it in place of a message.
    """

    __slots__ = ("data", "member")

    def __init__(self, member: str, data: bytes) -> None:
        self.member = member
        self.data = data

    def SerializeToString(self) -> bytes:  # protobuf's name, called by the codec
        data = self.data
        # DataEvent: <member> = field n, length-delimited.
        inner = bytes((_FIELD[self.member] << 3 | 2,)) + _varint(len(data))
        # ProcessEvent.data = field 2; the response's event = field 1.
        event_len = len(inner) + len(data)
        middle = b"\x12" + _varint(event_len)
        outer = b"\x0a" + _varint(len(middle) + event_len)
        return b"".join((outer, middle, inner, data))


def encode_json(chunk: DataChunk) -> bytes:
    return _JSON_PREFIX[chunk.member] + pybase64.b64encode(chunk.data) + _JSON_SUFFIX


FAST_ENCODERS[DataChunk] = encode_json
