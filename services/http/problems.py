"""RFC 9457 problem details: every error the bridge returns is `application/problem+json`.

A `MeshError` (raised by the bridge or sent by an agent in its `Nats-Service-Error-Code` reply)
keeps its status and stable code; 503s say when to retry. Nothing else reaches the client: an
unexpected exception becomes a plain 500 problem with no traceback (the traceback goes to the log).
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mesh.errors import MeshError, RequestError
from services.http.errors import MethodNotAllowed, NotFound

PROBLEM_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = 1
log = structlog.get_logger("services.http")


def problem_body(err: MeshError, instance: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"urn:agent-mesh:problem:{err.code}",
        "title": err.code.replace("_", " "),
        "status": err.status,
        "detail": err.message,
        "code": err.code,
    }
    if instance:
        body["instance"] = instance
    return body


def problem_headers(err: MeshError) -> dict[str, str]:
    headers = {}
    if err.status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if err.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="agent-mesh"'
    return headers


def problem(err: MeshError, instance: str | None = None) -> Response:
    status = err.status if 400 <= err.status <= 599 else 500
    return Response(
        orjson.dumps(problem_body(err, instance)),
        status_code=status,
        media_type=PROBLEM_TYPE,
        headers=problem_headers(err),
    )


async def on_mesh_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MeshError)
    return problem(exc, request.url.path)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err: MeshError
    if exc.status_code == 404:
        err = NotFound(f"no route for {request.method} {request.url.path}"[:300])
    elif exc.status_code == 405:
        err = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"[:300])
    else:
        err = RequestError(str(exc.detail))
        err.status = exc.status_code  # type: ignore[misc]
    response = problem(err, request.url.path)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("request.failed", path=request.url.path[:200], exc_info=exc)
    return problem(MeshError("internal error in the HTTP bridge; see its log"), request.url.path)
