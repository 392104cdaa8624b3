"""A2A: each LLM agent type is an A2A agent at `/a2a/{type}`.

    GET  /a2a/{type}/.well-known/agent-card.json   -> its agent card (JSON-RPC binding, protocol 1.0)
    POST /a2a/{type}                               -> JSON-RPC: SendMessage, SendStreamingMessage,
                                                      GetTask, CancelTask

The mapping (a task is a run, `contextId` the instance name, a pending approval `input-required`)
is in `services.http.a2a_tasks`; the `a2a-sdk` dispatcher does the protocol. That module takes a
second to import, so it is imported on the first A2A request (off the event loop), not when the
bridge starts. Other agent types are not A2A agents: 404.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mesh import subjects
from services.catalog import AgentType
from services.http.errors import NotFound
from services.http.llm_runs import llm_type
from services.http.routes import bridge_of

if TYPE_CHECKING:
    from services.http.a2a_tasks import A2AServer

_server: A2AServer | None = None


async def server() -> A2AServer:
    global _server
    if _server is None:
        module = await asyncio.to_thread(importlib.import_module, "services.http.a2a_tasks")
        _server = module.A2AServer()
    return _server


async def _agent(request: Request) -> AgentType:
    agent_type = subjects.check_type(request.path_params["type"])
    found = await llm_type(bridge_of(request), agent_type)
    if found is None:
        raise NotFound(f"no LLM agent type {agent_type!r} is served: A2A agents are the LLM agent types")
    return found


async def agent_card(request: Request) -> Response:
    agent = await _agent(request)
    return (await server()).card(request, agent)


async def rpc(request: Request) -> Response:
    await _agent(request)
    return await (await server()).handle(request)


ROUTES = [
    Route("/a2a/{type}/.well-known/agent-card.json", agent_card, methods=["GET"]),
    Route("/a2a/{type}", rpc, methods=["POST"]),
]


_TYPE = {
    "name": "type",
    "in": "path",
    "required": True,
    "description": "an LLM agent type",
    "schema": {"type": "string", "pattern": subjects.TYPE_PATTERN.pattern},
}
_PROBLEM = {
    "description": "not an LLM agent type, or no valid token (RFC 9457 problem details)",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
OPENAPI_PATHS: dict[str, Any] = {
    "/a2a/{type}/.well-known/agent-card.json": {
        "get": {
            "summary": "A2A: the agent card of an LLM agent type (JSON-RPC binding, protocol 1.0)",
            "operationId": "getAgentCard",
            "parameters": [_TYPE],
            "responses": {
                "200": {"description": "the agent card", "content": {"application/json": {"schema": {"type": "object"}}}},
                "default": _PROBLEM,
            },
        }
    },
    "/a2a/{type}": {
        "post": {
            "summary": "A2A JSON-RPC 2.0: SendMessage, SendStreamingMessage, GetTask, CancelTask (header A2A-Version: 1.0)",
            "operationId": "a2aRpc",
            "parameters": [_TYPE],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {
                "200": {
                    "description": "a JSON-RPC response (errors too), or server-sent events for SendStreamingMessage",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                "default": _PROBLEM,
            },
        }
    },
}
"""The routes above in the bridge's OpenAPI document."""
