"""`/mcp`: the mesh's agents as MCP tools over Streamable HTTP (`services.mcp_tools`).

Stateless (no MCP session is kept between HTTP requests), so any bridge replica answers any
request. The bridge's bearer auth applies as on every route (the middleware runs first), and a
browser `Origin` must be this host or a configured origin, as the MCP specification asks of
servers (DNS rebinding). The `mcp` package takes seconds to import: it is loaded, off the event
loop, by the first request to `/mcp`, and its session manager then runs as a task of the bridge
until the bridge stops.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from services.http.auth import origin_allowed
from services.http.bridge import Bridge
from services.http.errors import Forbidden
from services.http.problems import problem

if TYPE_CHECKING:
    from mcp.server.context import ServerRequestContext
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager


class McpDoor:
    """The ASGI app mounted at `/mcp`; one per bridge app."""

    def __init__(self) -> None:
        self._manager: StreamableHTTPSessionManager | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        bridge: Bridge = scope["app"].state.bridge
        headers = Headers(scope=scope)
        if not origin_allowed(headers, bridge.config.cors_origins):
            await problem(Forbidden(f"Origin {headers.get('origin', '')[:100]!r} is not allowed"), scope["path"])(
                scope, receive, send
            )
            return
        manager = self._manager or await self._start(bridge)
        await manager.handle_request(scope, receive, send)

    async def _start(self, bridge: Bridge) -> StreamableHTTPSessionManager:
        async with self._lock:
            if self._manager is not None:
                return self._manager
            tools_module = await asyncio.to_thread(importlib.import_module, "services.mcp_tools")
            from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

            tools = tools_module.MeshTools(bridge.client, bridge.catalog, timeout=bridge.config.timeout)
            server = tools_module.build_server(tools, _principal)
            manager = StreamableHTTPSessionManager(
                app=server, stateless=True, json_response=True, max_request_body_size=bridge.max_body
            )
            running: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            bridge.spawn(_run(manager, running))
            await running  # raises what stopped the manager from starting
            self._manager = manager
            return manager


async def _run(manager: StreamableHTTPSessionManager, running: asyncio.Future[None]) -> None:
    """Keep the session manager's task group open until the bridge stops (cancels this task)."""
    try:
        async with manager.run():
            running.set_result(None)
            await asyncio.Event().wait()
    except BaseException as exc:
        if not running.done():
            running.set_exception(exc if isinstance(exc, Exception) else RuntimeError("the MCP door stopped"))
        raise


def _principal(ctx: ServerRequestContext[Any, Any]) -> str:
    """Who decides an approval through this door: the bearer token's id, or `mcp`."""
    request = ctx.request
    state = getattr(request, "scope", {}).get("state", {}) if request is not None else {}
    principal = state.get("principal") if isinstance(state, dict) else None
    return f"mcp:{principal}" if principal else "mcp"
