"""Incremental `multipart/form-data` parsing with python-multipart's streaming
parser: nothing is spooled, part data is handed out as it arrives.

The parser is callback-driven and synchronous; `feed` collects its callbacks
into a list of events that the async upload loop then acts on (opening a
file, writing to it), so the writes can await without re-entering the
parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.decoders import QuotedPrintableDecoder
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState


class MultipartError(Exception):
    """Framing error; `in_part` tells whether it struck inside a part's data."""

    def __init__(self, message: str, in_part: bool) -> None:
        super().__init__(message)
        self.in_part = in_part


@dataclass(slots=True)
class PartStart:
    # Header names lower-cased; values raw bytes as UTF-8 with surrogate escapes.
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class PartData:
    data: bytes | memoryview


@dataclass(slots=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


class _Collect:
    """Write target of the quoted-printable decoder."""

    def __init__(self, stream: MultipartStream) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        if data:
            self.stream._events.append(PartData(data))
        return len(data)


class MultipartStream:
    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"--" + boundary
        self._events: list[Event] = []
        self._in_preamble = True
        self._preamble_tail = b""
        self._in_part = False
        self._part = PartStart()
        self._field = bytearray()
        self._value = bytearray()
        self._qp: QuotedPrintableDecoder | None = None
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    def feed(self, chunk: bytes) -> list[Event]:
        if self._in_preamble:
            chunk = self._skip_preamble(chunk)
            if not chunk:
                return []
        try:
            self._parser.write(chunk)
        except MultipartParseError as e:
            raise MultipartError(f"multipart: {e}", self._in_part) from None
        events, self._events = self._events, []
        return events

    def finish(self) -> list[Event]:
        """End of body: the closing delimiter must have been seen."""
        if self._parser.state != MultipartState.END:
            if self._in_part:
                raise MultipartError("unexpected EOF", in_part=True)
            raise MultipartError("multipart: NextPart: EOF", in_part=False)
        events, self._events = self._events, []
        return events

    def _skip_preamble(self, chunk: bytes) -> bytes:
        """Text before the first delimiter line is ignored (MIME preamble), as
        Go's reader does; python-multipart expects the delimiter first."""
        data = self._preamble_tail + chunk
        start = 0
        while True:
            i = data.find(self._delimiter, start)
            if i < 0:
                # Keep enough to recognise a delimiter split across chunks.
                self._preamble_tail = data[-(len(self._delimiter) + 1) :]
                return b""
            if i == 0 or data[i - 1] == 0x0A:
                self._in_preamble = False
                self._preamble_tail = b""
                return data[i:]
            start = i + 1

    # python-multipart callbacks

    def _on_part_begin(self) -> None:
        self._part = PartStart()
        self._qp = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        value = self._value.decode("utf-8", "surrogateescape").strip(" \t")
        self._part.headers.append((name, value))
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        encoding = self._part.get("content-transfer-encoding")
        if encoding is not None and encoding.lower() == "quoted-printable":
            self._qp = QuotedPrintableDecoder(_Collect(self))
        self._events.append(self._part)
        self._in_part = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._qp is not None:
            self._qp.write(data[start:end])
        else:
            self._events.append(PartData(memoryview(data)[start:end]))

    def _on_part_end(self) -> None:
        if self._qp is not None:
            self._qp.finalize()
            self._qp = None
        self._events.append(PartEnd())
        self._in_part = False
