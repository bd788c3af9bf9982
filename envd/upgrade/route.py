"""`POST /upgrade` (http-api.md §10): checks in upstream's order, then the swap.

On success no response is ever sent: the execve closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from envd.api.responses import text_error
from envd.api.store import ControlPlane
from envd.services.process.plan import go_errno_text
from envd.upgrade.outgoing import UpgradeError, Upgrader

TARGET_HEADER = "x-envd-upgrade-bin"


def _has_body(request: Request) -> bool:
    """Go's `ContentLength != 0`: a length other than 0, or a chunked body."""
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() != "0"
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def _open_target(path: str) -> int:
    # The running daemon may be executing this very file (a chained upgrade):
    # unlinking first lets the new one land on a fresh inode (no ETXTBSY).
    with contextlib.suppress(OSError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o755)
    os.fchmod(fd, 0o755)
    return fd


async def _write_body(request: Request, path: str) -> str | None:
    """Stream the body into `path`; the error text on failure."""
    try:
        fd = await asyncio.to_thread(_open_target, path)
    except OSError as e:
        return f"open {path}: {go_errno_text(e.errno or 0)}"
    try:
        async for chunk in request.stream():
            view = memoryview(chunk)
            while view:
                view = view[await asyncio.to_thread(os.write, fd, view) :]
    except OSError as e:
        return f"write {path}: {go_errno_text(e.errno or 0)}"
    except ClientDisconnect:
        return "unexpected EOF"
    finally:
        os.close(fd)
    return None


async def post_upgrade(request: Request) -> Response:
    control: ControlPlane = request.app.state.control
    upgrader: Upgrader = request.app.state.upgrader
    if not control.initialized:
        return text_error(409, "envd not initialized")
    target = upgrader.config.upgrade_bin
    header = request.headers.get(TARGET_HEADER, "")
    if header and header != target:
        return text_error(400, "unsupported upgrade target")
    new_bin = None
    if _has_body(request):
        error = await _write_body(request, target)
        if error is not None:
            return text_error(500, error)
        new_bin = target
    try:
        await upgrader.upgrade(new_bin)
    except UpgradeError as e:
        return text_error(500, str(e))
    return text_error(500, "upgrade did not take place")  # unreachable: execve replaced us
