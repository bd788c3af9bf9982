"""Connect errors written outside connectrpc (middleware), framed as the caller expects."""

from __future__ import annotations

import json
import struct

from connectrpc.code import Code

from envd.asgi import Send

# Connect code → HTTP status for unary error responses (connect protocol spec).
_HTTP_STATUS = {
    Code.CANCELED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}
_GRPC_STATUS = {code: i for i, code in enumerate(Code, start=1)}


def code_name(code: Code) -> str:
    return str(code.value)


async def send_connect_error(send: Send, content_type: str, code: Code, message: str) -> None:
    """Answer with a Connect/gRPC error shaped for the request's protocol.

    Streaming Connect requests get HTTP 200 with a single end-stream envelope;
    gRPC and gRPC-Web get a trailers-only 200 with grpc-status; everything
    else (unary Connect, GET, unknown) gets the unary JSON error.
    """
    ct = content_type.lower()
    if ct.startswith("application/connect+"):
        payload = json.dumps({"error": {"code": code_name(code), "message": message}}).encode()
        body = struct.pack(">BI", 2, len(payload)) + payload
        headers = [(b"content-type", content_type.encode())]
        status = 200
    elif ct.startswith("application/grpc"):
        headers = [
            (b"content-type", content_type.encode()),
            (b"grpc-status", str(_GRPC_STATUS[code]).encode()),
            (b"grpc-message", _grpc_percent_encode(message).encode()),
        ]
        body = b""
        status = 200
    else:
        body = json.dumps({"code": code_name(code), "message": message}).encode()
        headers = [(b"content-type", b"application/json")]
        status = _HTTP_STATUS.get(code, 500)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _grpc_percent_encode(message: str) -> str:
    out = []
    for byte in message.encode():
        if 0x20 <= byte <= 0x7E and byte != ord("%"):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)
