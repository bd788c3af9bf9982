"""The handover blob's layout versions, as upstream numbers them.

A writer stamps the lowest version that can express what it wrote, so a peer
that knows less can still read every blob that carries nothing new to it; a
reader refuses anything stamped above what it knows (it would mis-read it).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from envd.gen.upgrade.handover_pb2 import HandoverState

# Every field up to the port forwards.
SCHEMA_BASE = 1
# Adds guest_frozen_cgroups.
SCHEMA_GUEST_FROZEN = 2
MAX_SCHEMA = SCHEMA_GUEST_FROZEN


class HandoverError(Exception):
    pass


def stamp(state: HandoverState) -> int:
    """The schema to write for `state` (an empty guest-frozen list needs no version 2)."""
    return SCHEMA_GUEST_FROZEN if state.guest_frozen_cgroups else SCHEMA_BASE


def encode(state: HandoverState) -> bytes:
    state.schema = stamp(state)
    blob: bytes = state.SerializeToString()
    return blob


def decode(blob: bytes) -> HandoverState:
    state = HandoverState()
    try:
        state.ParseFromString(blob)
    except DecodeError as e:
        raise HandoverError(f"unmarshal handover: {e}") from None
    if state.schema > MAX_SCHEMA:
        raise HandoverError(f"handover schema {state.schema} exceeds max supported {MAX_SCHEMA}")
    return state
