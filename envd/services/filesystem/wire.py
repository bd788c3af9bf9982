"""Compact protojson for `ListDirResponse`, built by hand.

`json_format.MessageToDict` spends ~22 µs per EntryInfo, which made it the
largest cost of listing 10 000 entries. This produces the same JSON
(tests/test_filesystem_units.py compares both on every kind of entry).
"""

from __future__ import annotations

import json
from typing import Any

from envd.gen.filesystem import filesystem_pb2 as pb

_FILE_TYPES = {value: name for name, value in pb.FileType.items()}


def entry_dict(entry: pb.EntryInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if entry.name:
        out["name"] = entry.name
    if entry.type:
        out["type"] = _FILE_TYPES.get(entry.type, entry.type)
    if entry.path:
        out["path"] = entry.path
    if entry.size:
        out["size"] = str(entry.size)  # int64 travels as a string
    if entry.mode:
        out["mode"] = entry.mode
    if entry.permissions:
        out["permissions"] = entry.permissions
    if entry.owner:
        out["owner"] = entry.owner
    if entry.group:
        out["group"] = entry.group
    if entry.HasField("modified_time"):
        out["modifiedTime"] = entry.modified_time.ToJsonString()
    if entry.HasField("symlink_target"):
        out["symlinkTarget"] = entry.symlink_target
    if entry.metadata:
        out["metadata"] = dict(entry.metadata)
    if entry.is_symlink:
        out["isSymlink"] = True
    return out


def encode_list_dir(message: pb.ListDirResponse) -> bytes:
    if not message.entries:
        return b"{}"
    body = {"entries": [entry_dict(e) for e in message.entries]}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
