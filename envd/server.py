"""Serving the app with uvicorn, and the daemon's start-up steps."""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

import uvicorn
from starlette.applications import Starlette

from envd.app import create_app
from envd.config import Config
from envd.logs import HTTPExporter, setup_logging

# Upstream closes idle keep-alive connections after 640 s, longer than the
# edge proxy's idle timeout so that the proxy always closes first.
IDLE_TIMEOUT_S = 640
# uvicorn waits for open streams on SIGTERM unless bounded; streams are then
# cancelled, which never kills their processes.
GRACEFUL_SHUTDOWN_S = 1


def prepare_run_dir(config: Config) -> None:
    """`/run/e2b` and `.E2B_SANDBOX`; failures are reported and ignored, as upstream."""
    try:
        os.makedirs(config.run_dir, mode=0o755, exist_ok=True)
    except OSError as e:
        print(f"error creating {config.run_dir}: {e}", file=sys.stderr)
        return
    path = os.path.join(config.run_dir, ".E2B_SANDBOX")
    try:
        if os.path.exists(path):
            os.chmod(path, 0o644)
        with open(path, "w") as f:
            f.write("false" if config.is_not_fc else "true")
        os.chmod(path, 0o444)
    except OSError as e:
        print(f"error writing {path}: {e}", file=sys.stderr)


log = logging.getLogger(__name__)


class EnvdServer(uvicorn.Server):
    """uvicorn, but open streams are ended with a Connect error before it drains.

    uvicorn waits for connections to finish, then cancels what is left and
    exits without flushing it: a stream cut that way ends in a truncated
    chunked body. Ending our streams first (`unavailable`) lets each write a
    proper end-stream message within the grace period.
    """

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await self._on_shutdown()
        except Exception:
            log.exception("ending streams at shutdown failed")
        await super().shutdown(sockets)


def _http_protocol() -> type[asyncio.Protocol] | str:
    if importlib.util.find_spec("httptools") is None:
        return "h11"
    # Imported here: it needs httptools.
    from envd.headlimit import BoundedHttpToolsProtocol  # noqa: PLC0415

    return BoundedHttpToolsProtocol


def uvicorn_config(
    config: Config, exporter: HTTPExporter | None = None, app: Starlette | None = None
) -> uvicorn.Config:
    return uvicorn.Config(
        app or create_app(config, exporter=exporter),
        host=config.host,
        port=config.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=_http_protocol(),
        lifespan="on",
        access_log=False,
        log_config=None,  # envd.logs.setup_logging owns the handlers
        timeout_keep_alive=IDLE_TIMEOUT_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        # Upstream's header limit is Go's 1 MiB default; h11's default is
        # 64 KiB, and httptools gets envd.headlimit.
        h11_max_incomplete_event_size=1 << 20,
        server_header=False,
        date_header=True,
    )


# Errors that mean "no IPv6 here" (kernel booted with ipv6.disable=1, no
# usable address) rather than a real bind problem such as a taken port.
_NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.EADDRNOTAVAIL})


def bind(config: Config) -> socket.socket:
    """The listening socket; `0.0.0.0` (all addresses) listens on IPv6 and IPv4.

    One dual-stack socket, so a client whose `localhost` resolves to `::1`
    reaches us too (docs/compatibility.md); without IPv6, IPv4 only.
    """
    if config.host in ("0.0.0.0", ""):
        try:
            return _listen(socket.AF_INET6, "::", config.port)
        except OSError as e:
            if e.errno not in _NO_IPV6:
                raise
            log.warning("IPv6 is not available (%s): listening on IPv4 only", e.strerror)
    return _listen(socket.AF_INET, config.host, config.port)


def _listen(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Accept IPv4 too (as v4-mapped addresses), whatever net.ipv6.bindv6only says.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def serve(config: Config) -> int:
    prepare_run_dir(config)
    # The HTTP exporter only exists in Firecracker mode; lines wait in it
    # until MMDS names a collector.
    exporter = None if config.is_not_fc else HTTPExporter()
    setup_logging(config.verbose, exporter)
    try:
        sock = bind(config)
    except OSError as e:
        address = f"{config.host}:{config.port}"
        print(f"server stopped: listen tcp {address}: bind: {e.strerror}", file=sys.stderr)
        return 1
    app = create_app(config, exporter=exporter)
    server = EnvdServer(uvicorn_config(config, exporter, app), app.state.end_streams)
    with sock:
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            # uvicorn re-raises SIGINT after its graceful shutdown; the shutdown
            # is done, so exit as a shell reports an interrupted program.
            return 128 + signal.SIGINT
    return 0
