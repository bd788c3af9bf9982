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

from connectrpc.code import Code
from connectrpc.codec import Codec
from connectrpc.errors import ConnectError
from google.protobuf import json_format
from google.protobuf.message import Message

from envd.rpc.context import request_state

M = TypeVar("M", bound=Message)

# Hand-built encoders for bulky messages (or wire-ready stand-ins for them),
# registered by their service modules.
FAST_ENCODERS: dict[type, Callable[[Any], bytes]] = {}


# JSON's insignificant whitespace (RFC 8259); Python's str.strip() strips more.
_JSON_WHITESPACE = " \t\n\r"


def _unmarshal_error(message_class: type[Message], error: object) -> ConnectError:
    # A request that does not decode is the caller's fault: connect-go answers
    # invalid_argument; an exception escaping the codec would be `unknown`
    # plus a traceback in our log.
    name = message_class.DESCRIPTOR.full_name
    return ConnectError(Code.INVALID_ARGUMENT, f"unmarshal into *{name}: {error}")


class ProtoBinaryCodec(Codec[Message, Any]):
    def name(self) -> str:
        return "proto"

    def encode(self, message: Message) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[M]) -> M:
        try:
            return message_class.FromString(bytes(data))
        except Exception as e:  # any decoder failure is the caller's input
            raise _unmarshal_error(message_class, e) from None


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
        message: M = message_class()
        if not data:
            # connect-go: an empty stream envelope is the empty message, but an
            # empty unary body is an error of its JSON codec.
            if request_state().unary_body:
                raise _unmarshal_error(
                    message_class, "zero-length payload is not a valid JSON object"
                )
            return message
        try:
            text = bytes(data).decode()
        except UnicodeDecodeError as e:
            raise _unmarshal_error(message_class, f"invalid UTF-8 at byte {e.start}") from None
        body = text.lstrip(_JSON_WHITESPACE)
        # protojson wants an object at the top; Python's parser would take
        # `[]`, `"x"` or nothing at all for the empty message.
        if not body.startswith("{"):
            token = body[:1] or "EOF"
            raise _unmarshal_error(
                message_class, f"syntax error: unexpected token {token}, want a JSON object"
            )
        try:
            json_format.Parse(text, message, ignore_unknown_fields=True)
        except Exception as e:  # ParseError, RecursionError, ...: the caller's input
            if "recursion" in str(e):
                raise _unmarshal_error(message_class, "exceeded max recursion depth") from None
            raise _unmarshal_error(message_class, e) from None
        return message


def codecs() -> list[Codec[Message, Any]]:
    return [ProtoBinaryCodec(), CompactJSONCodec()]
