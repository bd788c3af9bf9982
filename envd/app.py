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

from envd.api.envs import get_envs, get_metrics
from envd.api.files.routes import file_routes
from envd.api.freeze import post_collapse, post_freeze, post_fsfreeze, post_fsthaw, post_unfreeze
from envd.api.health import health
from envd.api.init import post_init
from envd.api.router import http_exception
from envd.api.store import ControlPlane
from envd.config import Config
from envd.execcontext import ExecContext
from envd.gen.filesystem.filesystem_connect import FilesystemASGIApplication
from envd.gen.process.process_connect import ProcessASGIApplication
from envd.host.cgroups import Manager, create_manager
from envd.host.freezer import WorkloadFreezer
from envd.logs import HTTPExporter
from envd.middleware.access_token import AccessTokenMiddleware
from envd.middleware.basic_auth import BasicAuthMiddleware
from envd.middleware.cors import CORSMiddleware
from envd.middleware.headers import TrimHeaderValuesMiddleware
from envd.middleware.state import RequestStateMiddleware
from envd.port.forwarder import ForwardTable, PortForwarder
from envd.rpc.codec import codecs
from envd.rpc.compression import CheckedGzip
from envd.rpc.guard import ConnectGuard
from envd.services.filesystem.legacy import LegacyInterceptor
from envd.services.filesystem.service import FilesystemService
from envd.services.process.backlog import Retention
from envd.services.process.service import ProcessService
from envd.upgrade.forwards import ForwardCarrier
from envd.upgrade.freezer import HandoverFreezer
from envd.upgrade.incoming import resume
from envd.upgrade.outgoing import Upgrader
from envd.upgrade.route import post_upgrade


def _get(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    # go-chi does not answer HEAD for a GET route (HEAD /health → 405).
    route = Route(path, endpoint, methods=["GET"], include_in_schema=False)
    route.methods = {"GET"}
    return route


def _post(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    return Route(path, endpoint, methods=["POST"], include_in_schema=False)


def create_app(
    config: Config,
    exec_ctx: ExecContext | None = None,
    exporter: HTTPExporter | None = None,
    cgroups: Manager | None = None,
) -> Starlette:
    exec_ctx = exec_ctx or ExecContext(
        default_user=config.default_user, default_workdir=config.default_workdir
    )
    exec_ctx.internal_envs["E2B_SANDBOX"] = "false" if config.is_not_fc else "true"
    # Any failure gives the no-op manager (stderr says why), as upstream.
    cgroups = cgroups or create_manager(config.no_cgroups, config.cgroup_root)
    # One freezer, one lock: /freeze, /unfreeze, /init's thaw and the live upgrade.
    freezer = WorkloadFreezer(cgroups, watchdog_s=config.thaw_watchdog_s)
    process = ProcessService(
        exec_ctx,
        cgroups,
        Retention(config.output_buffer_stream, config.output_buffer_total),
    )
    filesystem = FilesystemService(exec_ctx)
    control = ControlPlane(config, exec_ctx, exporter)
    handover_freezer = HandoverFreezer(freezer)
    upgrader = Upgrader(config, process, filesystem, control, handover_freezer)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        table = ForwardTable(
            asyncio.get_running_loop(),
            forward_ip=config.forward_ip,
            cgroup_dir=cgroups.path_for("socats"),
        )
        carrier = ForwardCarrier(table)
        upgrader.forwards = carrier.export
        upgrader.restore_forwards = lambda _carried: carrier.restore()
        if config.resume_handover:
            # Before the first connection is accepted, with the workload still frozen,
            # and before the first port scan (no duplicate socat for a carried forward).
            await resume(
                config,
                process,
                filesystem,
                control,
                handover_freezer,
                control.handover,
                carrier.adopt,
            )
        control.start()
        forwarder = PortForwarder(table)
        app.state.forwarder = forwarder
        forwarder.start()
        yield
        control.handover.close()
        await forwarder.close()
        await process.close()
        await filesystem.close()
        await control.close()
        await freezer.close()
        cgroups.close()

    process_app = ProcessASGIApplication(process, codecs=codecs(), compressions=[CheckedGzip()])
    # Only the filesystem service speaks the old SDK's shapes, as upstream.
    filesystem_app = FilesystemASGIApplication(
        filesystem,
        codecs=codecs(),
        compressions=[CheckedGzip()],
        interceptors=[LegacyInterceptor()],
    )
    app = Starlette(
        routes=[
            _get("/health", health),
            _get("/envs", get_envs),
            _get("/metrics", get_metrics),
            _post("/init", post_init),
            _post("/upgrade", post_upgrade),
            _post("/freeze", post_freeze),
            _post("/unfreeze", post_unfreeze),
            _post("/fsfreeze", post_fsfreeze),
            _post("/fsthaw", post_fsthaw),
            _post("/collapse", post_collapse),
            *file_routes(),
            Mount(process_app.path, app=ConnectGuard(process_app)),
            Mount(filesystem_app.path, app=ConnectGuard(filesystem_app)),
        ],
        middleware=[
            # Outermost first, as upstream: CORS, access token, Basic-auth user;
            # header values trimmed as Go's net/http trims them before all of it.
            Middleware(TrimHeaderValuesMiddleware),
            Middleware(RequestStateMiddleware),
            Middleware(CORSMiddleware),
            Middleware(
                AccessTokenMiddleware,
                token=control.access_token,
                locked=lambda: control.handover.resumed and not control.initialized,
            ),
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

    async def end_streams() -> None:
        # Shutdown has begun: open streams end with `unavailable`, new ones too.
        await process.close()
        filesystem.end_streams()

    app.state.end_streams = end_streams
    app.state.cgroups = cgroups
    app.state.freezer = freezer
    app.state.upgrader = upgrader
    # /fsfreeze and /fsthaw: their own lock, apart from the freezer's.
    app.state.fs_lock = asyncio.Lock()
    return app
