"""Serving the app with uvicorn, and the daemon's start-up steps."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys

import uvicorn

from envd.app import create_app
from envd.config import Config
from envd.http_limits import BoundedHeadHttpToolsProtocol
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


def uvicorn_config(config: Config, exporter: HTTPExporter | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(config, exporter=exporter),
        host=config.host,
        port=config.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=BoundedHeadHttpToolsProtocol,
        lifespan="on",
        access_log=False,
        log_config=None,  # envd.logs.setup_logging owns the handlers
        timeout_keep_alive=IDLE_TIMEOUT_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        # Upstream's header limit is Go's 1 MiB default (envd/http_limits.py
        # for httptools); h11's default would be 64 KiB.
        h11_max_incomplete_event_size=1 << 20,
        server_header=False,
        date_header=True,
    )


def bind(config: Config) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
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
    server = uvicorn.Server(uvicorn_config(config, exporter))
    with sock:
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            # uvicorn re-raises SIGINT after its graceful shutdown; the shutdown
            # is done, so exit as a shell reports an interrupted program.
            return 128 + signal.SIGINT
    return 0
