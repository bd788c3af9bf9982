from starlette.requests import Request
from starlette.responses import Response


async def health(_request: Request) -> Response:
    # An explicitly empty Content-Type, as upstream sends; probes only look at the status.
    return Response(status_code=204, headers={"Cache-Control": "no-store", "Content-Type": ""})
