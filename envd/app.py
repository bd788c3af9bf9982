"""The one ASGI application: plain routes and both Connect services on one port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount, Route

from envd.api.health import health
from envd.api.router import http_exception
from envd.config import Config
from envd.execcontext import ExecContext
from envd.gen.filesystem.filesystem_connect import FilesystemASGIApplication
from envd.gen.process.process_connect import ProcessASGIApplication
from envd.permissions.basic_auth import BasicAuthMiddleware
from envd.rpc.codec import codecs
from envd.rpc.context import RequestStateMiddleware
from envd.services.filesystem.service import FilesystemService
from envd.services.process.service import ProcessService


def create_app(config: Config, exec_ctx: ExecContext | None = None) -> Starlette:
    exec_ctx = exec_ctx or ExecContext(
        default_user=config.default_user, default_workdir=config.default_workdir
    )
    exec_ctx.internal_envs["E2B_SANDBOX"] = "false" if config.is_not_fc else "true"
    process = ProcessService(exec_ctx)
    filesystem = FilesystemService(exec_ctx)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await process.close()
        await filesystem.close()

    # go-chi does not answer HEAD for a GET route (HEAD /health → 405).
    health_route = Route("/health", health, methods=["GET"], include_in_schema=False)
    health_route.methods = {"GET"}

    process_app = ProcessASGIApplication(process, codecs=codecs())
    filesystem_app = FilesystemASGIApplication(filesystem, codecs=codecs())
    app = Starlette(
        routes=[
            health_route,
            Mount(process_app.path, app=process_app),
            Mount(filesystem_app.path, app=filesystem_app),
        ],
        middleware=[
            # Outermost first, as upstream: (CORS, access token,) Basic-auth user.
            Middleware(RequestStateMiddleware),
            Middleware(BasicAuthMiddleware),
        ],
        exception_handlers={HTTPException: http_exception},
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.exec_ctx = exec_ctx
    app.state.process = process
    app.state.filesystem = filesystem
    return app
