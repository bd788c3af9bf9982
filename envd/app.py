"""The one ASGI application: plain routes and both Connect services on one port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from envd.api.auth import AccessTokenMiddleware
from envd.api.cors import CORSMiddleware
from envd.api.envs import get_envs, get_metrics
from envd.api.files.routes import file_routes
from envd.api.health import health
from envd.api.init import post_init
from envd.api.router import http_exception
from envd.api.store import ControlPlane
from envd.config import Config
from envd.execcontext import ExecContext
from envd.gen.filesystem.filesystem_connect import FilesystemASGIApplication
from envd.gen.process.process_connect import ProcessASGIApplication
from envd.logs import HTTPExporter
from envd.permissions.basic_auth import BasicAuthMiddleware
from envd.port.forwarder import ForwardTable, PortForwarder
from envd.rpc.codec import codecs
from envd.rpc.context import RequestStateMiddleware
from envd.services.filesystem.legacy import LegacyInterceptor
from envd.services.filesystem.service import FilesystemService
from envd.services.process.service import ProcessService


def _get(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    # go-chi does not answer HEAD for a GET route (HEAD /health → 405).
    route = Route(path, endpoint, methods=["GET"], include_in_schema=False)
    route.methods = {"GET"}
    return route


def create_app(
    config: Config, exec_ctx: ExecContext | None = None, exporter: HTTPExporter | None = None
) -> Starlette:
    exec_ctx = exec_ctx or ExecContext(
        default_user=config.default_user, default_workdir=config.default_workdir
    )
    exec_ctx.internal_envs["E2B_SANDBOX"] = "false" if config.is_not_fc else "true"
    process = ProcessService(exec_ctx)
    filesystem = FilesystemService(exec_ctx)
    control = ControlPlane(config, exec_ctx, exporter)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        control.start()
        # The cgroup manager, once wired, passes its `socats` directory here.
        table = ForwardTable(asyncio.get_running_loop(), forward_ip=config.forward_ip)
        forwarder = PortForwarder(table)
        app.state.forwarder = forwarder
        forwarder.start()
        yield
        await forwarder.close()
        await process.close()
        await filesystem.close()
        await control.close()

    process_app = ProcessASGIApplication(process, codecs=codecs())
    # Only the filesystem service speaks the old SDK's shapes, as upstream.
    filesystem_app = FilesystemASGIApplication(
        filesystem, codecs=codecs(), interceptors=[LegacyInterceptor()]
    )
    app = Starlette(
        routes=[
            _get("/health", health),
            _get("/envs", get_envs),
            _get("/metrics", get_metrics),
            Route("/init", post_init, methods=["POST"], include_in_schema=False),
            *file_routes(),
            Mount(process_app.path, app=process_app),
            Mount(filesystem_app.path, app=filesystem_app),
        ],
        middleware=[
            # Outermost first, as upstream: CORS, access token, Basic-auth user.
            Middleware(RequestStateMiddleware),
            Middleware(CORSMiddleware),
            Middleware(AccessTokenMiddleware, token=control.access_token),
            Middleware(BasicAuthMiddleware),
        ],
        exception_handlers={HTTPException: http_exception},
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.exec_ctx = exec_ctx
    app.state.process = process
    app.state.filesystem = filesystem
    app.state.control = control
    return app
