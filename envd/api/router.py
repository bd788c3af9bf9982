"""Router answers for unknown paths and methods, shaped as go-chi's (upstream's router)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response


async def http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return PlainTextResponse(
            "404 page not found\n", 404, headers={"X-Content-Type-Options": "nosniff"}
        )
    if exc.status_code == 405:
        return Response(status_code=405, headers=exc.headers)
    return PlainTextResponse(exc.detail, exc.status_code, headers=exc.headers)
