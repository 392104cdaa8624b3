"""`create_app`: the Starlette application of the HTTP bridge (routes, middleware, error handlers)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from mesh import bus
from mesh.errors import MeshError
from services.http import calls, messages, problems, routes, streams
from services.http.a2a import ROUTES as A2A_ROUTES
from services.http.auth import Auth, AuthMiddleware
from services.http.bridge import Bridge
from services.http.config import BridgeConfig
from services.http.connect import connect as websocket_connect
from services.http.mcp import McpDoor
from services.http.media_stream import media_stream
from services.http.metrics import MetricsMiddleware
from services.http.openai_api import ROUTES as OPENAI_ROUTES
from services.http.openai_api import OpenAIErrors
from services.http.openapi import build_openapi
from services.http.twilio import call_webhook

STATIC = Path(__file__).parent / "static"


async def openapi(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    return JSONResponse(build_openapi(await bridge.types(), auth=bridge.config.auth_enabled))


async def dashboard(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def client_js(request: Request) -> Response:
    return FileResponse(STATIC / "client.js", media_type="text/javascript", headers={"Cache-Control": "no-cache"})


async def docs(request: Request) -> Response:
    return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})


def create_app(config: BridgeConfig, *, nats: bus.NatsOptions | None = None, nc: bus.Connection | None = None) -> Starlette:
    """The bridge app. It connects to NATS with `nats` at startup, or uses the connection `nc`."""
    if (nats is None) == (nc is None):
        raise ValueError("pass exactly one of nats= or nc=")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        conn = nc if nc is not None else await bus.connect(nats)  # type: ignore[arg-type]
        bridge = Bridge(conn, config)
        await bridge.start()
        app.state.bridge = bridge
        try:
            yield
        finally:
            await bridge.stop()
            if nc is None and not conn.is_closed:
                await conn.drain()

    auth = Auth(config.tokens, config.ticket_ttl)
    middleware = [Middleware(MetricsMiddleware), Middleware(OpenAIErrors)]
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Prefer", "Last-Event-ID"],
                expose_headers=["Location", "Retry-After", "Preference-Applied", "Idempotent-Replayed"],
            )
        )
    middleware.append(
        Middleware(AuthMiddleware, auth=auth, cors_origins=config.cors_origins, twilio_signed=bool(config.twilio_auth_token))
    )
    app = Starlette(
        routes=[
            Route("/", dashboard, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            Route("/ui", dashboard, methods=["GET"]),
            Route("/ui/{type}", dashboard, methods=["GET"]),
            Route("/ui/{type}/{name}", dashboard, methods=["GET"]),
            Route("/client.js", client_js, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/auth/tickets", routes.create_ticket, methods=["POST"]),
            Route("/agents", routes.list_types, methods=["GET"]),
            Route("/agents/{type}", routes.list_instances, methods=["GET"]),
            Route("/agents/{type}", calls.create_instance, methods=["POST"]),
            Route("/agents/{type}/{name}", routes.post_agent, methods=["POST"]),
            Route("/agents/{type}/{name}/state", routes.get_state, methods=["GET"]),
            Route("/agents/{type}/{name}/methods/{method}", calls.call_method, methods=["POST"]),
            Route("/agents/{type}/{name}/messages", messages.get_messages, methods=["GET"]),
            Route("/agents/{type}/{name}/events", streams.sse, methods=["GET"]),
            WebSocketRoute("/agents/{type}/{name}/ws", streams.websocket),
            WebSocketRoute("/agents/{type}/{name}/connect", websocket_connect),
            Route("/agents/{type}/{name}/call", call_webhook, methods=["POST"]),
            WebSocketRoute("/agents/{type}/{name}/media-stream", media_stream),
            Route("/agents/{type}/{name}/approvals", routes.list_approvals, methods=["GET"]),
            Route("/agents/{type}/{name}/approvals/{id}/{decision}", routes.decide_approval, methods=["POST"]),
            Route("/runs/{id}", routes.get_run, methods=["GET"]),
            Route("/mcp", McpDoor(), methods=["GET", "POST", "DELETE"]),
            *OPENAI_ROUTES,
            *A2A_ROUTES,
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=middleware,
        exception_handlers={
            MeshError: problems.on_mesh_error,
            HTTPException: problems.on_http_exception,
            Exception: problems.on_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.auth = auth
    return app
