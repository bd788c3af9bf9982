"""`ListDirResponse` in wire-ready form.

Building 10 000 upb `EntryInfo` messages and then converting each back for
the JSON codec (~22 µs per entry) made ListDir of a big directory ~8× the
cost of reading it. `Listing` keeps the plain fields (`envd.fs.entry.Fields`)
and encodes them on demand; the service encodes the form the request asked
for in its worker thread, so the loop only hands the bytes on.

The bytes must be exactly protobuf's. The binary form is upb's own
`SerializeToString()` of the message built from the fields (upb beats any
Python encoder there). The JSON form is built by hand as our codec would give
it for the message (`MessageToDict`, compact; field order and omitted defaults
included); an entry its fast path does not cover (metadata, whose map order
is upb's, an empty string field, an unknown type) goes through a real
message. tests/test_filesystem_wire.py compares both forms on every kind of
entry.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring  # the C one, as json.dumps(ensure_ascii=False)

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from envd.fs.entry import Fields, to_message
from envd.gen.filesystem import filesystem_pb2 as pb
from envd.rpc.codec import FAST_ENCODERS
from envd.rpc.compression import Precompressed

_TYPE_JSON: dict[int, str] = {
    pb.FILE_TYPE_UNSPECIFIED: "",  # the default: omitted
    pb.FILE_TYPE_FILE: '"type":"FILE_TYPE_FILE",',
    pb.FILE_TYPE_DIRECTORY: '"type":"FILE_TYPE_DIRECTORY",',
}

# RFC 3339 text of whole seconds, e.g. `2026-12-01T12:00:00`: files in one
# directory share few distinct mtimes worth of seconds, and datetime is slow.
_SECONDS_TEXT: dict[int, str] = {}
_SECONDS_TEXT_LIMIT = 65_536


def _seconds_text(seconds: int) -> str:
    text = _SECONDS_TEXT.get(seconds)
    if text is None:
        # protobuf's own formatting, so the date part is its by construction.
        text = Timestamp(seconds=seconds).ToJsonString()[:-1]  # without the `Z`
        if len(_SECONDS_TEXT) >= _SECONDS_TEXT_LIMIT:
            _SECONDS_TEXT.clear()
        _SECONDS_TEXT[seconds] = text
    return text


def timestamp_json(ns: int) -> str:
    """`Timestamp.ToJsonString()` of FromNanoseconds(ns): 0, 3, 6 or 9 digits."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    text = _SECONDS_TEXT.get(seconds) or _seconds_text(seconds)
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def _listed_message(fields: Fields) -> pb.EntryInfo:
    # As it sits in a ListDirResponse: copying a message into the repeated
    # field can reorder its metadata map, and the order is part of the bytes.
    return pb.ListDirResponse(entries=[to_message(fields)]).entries[0]


def _slow_json(fields: Fields) -> str:
    return json.dumps(
        json_format.MessageToDict(_listed_message(fields)),
        separators=(",", ":"),
        ensure_ascii=False,
    )


# `"mode":…,"permissions":…,"owner":…,"group":…` by (mode, permissions,
# owner, group): a directory's entries share a handful.
_MIDDLE_JSON: dict[tuple[int, str, str, str], str] = {}


def _middle_json(key: tuple[int, str, str, str]) -> str:
    mode, permissions, owner, group = key
    text = f'"mode":{mode},' if mode else ""
    text += (
        f'"permissions":{encode_basestring(permissions)},'
        f'"owner":{encode_basestring(owner)},"group":{encode_basestring(group)}'
    )
    if len(_MIDDLE_JSON) >= _SECONDS_TEXT_LIMIT:
        _MIDDLE_JSON.clear()
    _MIDDLE_JSON[key] = text
    return text


def entry_json(fields: Fields) -> str:
    """One EntryInfo as our codec's compact protojson."""
    (name, kind, path, size, mode, permissions, owner, group, ns, target, metadata) = fields
    type_json = _TYPE_JSON.get(kind)
    if metadata or type_json is None or not (name and permissions and owner and group):
        return _slow_json(fields)
    # Field-number order; int64 travels as a string, uint32 as a number.
    path_json = f'"path":{encode_basestring(path)},' if path else ""
    size_json = f'"size":"{size}",' if size else ""
    key = (mode, permissions, owner, group)
    middle = _MIDDLE_JSON.get(key) or _middle_json(key)
    if ns:
        seconds, nanos = divmod(ns, 1_000_000_000)
        if nanos % 1_000:  # the usual case, inline: all nine digits
            stamp = _SECONDS_TEXT.get(seconds) or _seconds_text(seconds)
            time_json = f',"modifiedTime":"{stamp}.{nanos:09d}Z"'
        else:
            time_json = f',"modifiedTime":"{timestamp_json(ns)}"'
    else:
        time_json = ""
    target_json = "" if target is None else f',"symlinkTarget":{encode_basestring(target)}'
    return (
        f'{{"name":{encode_basestring(name)},{type_json}{path_json}{size_json}'
        f"{middle}{time_json}{target_json}}}"
    )


class Listing:
    """A `ListDirResponse` as plain fields, encoded on demand.

    connectrpc's binary codec only calls `SerializeToString()` and our JSON
    codec knows this type (FAST_ENCODERS), so the handler can return it in
    place of the message; the legacy interceptor converts it like one.
    """

    __slots__ = ("_binary", "_json", "entries")

    def __init__(self, entries: list[Fields]) -> None:
        self.entries = entries
        self._json: bytes | None = None
        self._binary: bytes | None = None

    def SerializeToString(self) -> bytes:  # protobuf's name, called by the codec
        if self._binary is None:
            # upb serializes a built message faster than Python can encode
            # the fields by hand (~6 against ~9 µs per entry), exact by construction.
            self._binary = self.to_message().SerializeToString()
        return self._binary

    def to_json(self) -> bytes:
        if self._json is None:
            if not self.entries:
                self._json = b"{}"
            else:
                body = ",".join([entry_json(fields) for fields in self.entries])
                self._json = f'{{"entries":[{body}]}}'.encode()
        return self._json

    def prepare(self, *, binary: bool, gzipped: bool, min_gzip: int) -> None:
        """Encode now (in the caller's thread), and gzip too if big enough and wanted."""
        if binary:
            data = self.SerializeToString()
            if gzipped and len(data) >= min_gzip:
                self._binary = Precompressed.of(data)
        else:
            data = self.to_json()
            if gzipped and len(data) >= min_gzip:
                self._json = Precompressed.of(data)

    def to_message(self) -> pb.ListDirResponse:
        return pb.ListDirResponse(entries=[to_message(fields) for fields in self.entries])


FAST_ENCODERS[Listing] = Listing.to_json
