"""Connect codecs for Google protobuf messages.

The SDKs use the JSON codec. connectrpc's stock Google JSON codec calls
`MessageToJson`, which pretty-prints and costs ~240 µs per 64 KiB output
event, capping command output near 0.15 GB/s. We emit compact protojson (as
upstream's Go `protojson` does), and the services register hand-built
encoders for their bulky messages in `FAST_ENCODERS` (process output chunks,
directory listings).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from connectrpc.codec import Codec
from connectrpc.compat import google_protobuf_binary_codec
from google.protobuf import json_format
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

# Hand-built encoders for bulky messages (or wire-ready stand-ins for them),
# registered by their service modules.
FAST_ENCODERS: dict[type, Callable[[Any], bytes]] = {}


class CompactJSONCodec(Codec[Message, Any]):
    def name(self) -> str:
        return "json"

    def encode(self, message: Message) -> bytes:
        fast = FAST_ENCODERS.get(type(message))
        if fast is not None:
            return fast(message)
        return json.dumps(
            json_format.MessageToDict(message), separators=(",", ":"), ensure_ascii=False
        ).encode()

    def decode(self, data: bytes | bytearray, message_class: type[M]) -> M:
        message = message_class()
        # protojson accepts an empty body as the empty message.
        if data.strip():
            json_format.Parse(bytes(data), message, ignore_unknown_fields=True)
        return message


def codecs() -> list[Codec]:
    return [google_protobuf_binary_codec(), CompactJSONCodec()]
