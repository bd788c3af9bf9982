"""Routing of `/files` and `/files/compose`, with go-chi's answers for other methods."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from envd.api.files.compose import compose
from envd.api.files.download import download
from envd.api.files.query import QueryBindError, bind_file_params
from envd.api.files.upload import upload
from envd.api.responses import text_error
from envd.asgi import ASGIApp


def _not_allowed(*methods: str) -> Response:
    response = Response(status_code=405)
    # One Allow header per method, as go-chi writes them.
    del response.headers["content-length"]
    response.raw_headers.extend((b"allow", m.encode()) for m in methods)
    response.raw_headers.append((b"content-length", b"0"))
    return response


async def files(request: Request) -> Response | ASGIApp:
    if request.method not in ("GET", "POST"):
        return _not_allowed("GET", "POST")
    try:
        params = bind_file_params(request.scope.get("query_string", b""))
    except QueryBindError as e:
        return text_error(400, str(e))
    if request.method == "GET":
        return await download(request, params)
    return await upload(request, params)


async def files_compose(request: Request) -> Response:
    if request.method != "POST":
        return _not_allowed("POST")
    return await compose(request)


def file_routes() -> list[Route]:
    routes = [
        Route("/files", files, include_in_schema=False),
        Route("/files/compose", files_compose, include_in_schema=False),
    ]
    for route in routes:
        route.methods = None  # every method reaches the endpoint, which answers 405 itself
    return routes
