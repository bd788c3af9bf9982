"""gzip for Connect requests, with connect-go's error codes for broken input.

connectrpc's stock gzip lets `zlib.error`/`EOFError` escape, which the
runtime turns into `unknown` plus a traceback. connect-go answers corrupt
compressed input with `invalid_argument`; a body that inflates past the
read limit stays `resource_exhausted` (connectrpc checks that already).
"""

from __future__ import annotations

import zlib

from connectrpc.code import Code
from connectrpc.compression.gzip import GzipCompression
from connectrpc.errors import ConnectError


class CheckedGzip(GzipCompression):
    def decompress(
        self, data: bytes | bytearray | memoryview, read_max_bytes: int | None = None
    ) -> bytes:
        try:
            return super().decompress(data, read_max_bytes)
        except ConnectError:
            raise
        except EOFError:
            raise ConnectError(Code.INVALID_ARGUMENT, "decompress: unexpected EOF") from None
        except (zlib.error, OSError, ValueError) as e:
            raise ConnectError(Code.INVALID_ARGUMENT, _go_text(str(e))) from None


def _go_text(error: str) -> str:
    # The texts Go's compress/gzip and compress/flate give for the same faults.
    if "header" in error or "unknown compression method" in error:
        return "get decompressor: gzip: invalid header"
    if "check" in error:
        return "decompress: gzip: invalid checksum"
    return "decompress: flate: corrupt input"
