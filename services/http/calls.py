"""Routes that reach an agent beyond its plain request: its methods, and fresh instances.

    POST /agents/{type}/{name}/methods/{method}   -> request with `Mesh-Method: <method>` on agents.<type>.<token>
    POST /agents/{type}                           -> 201, a fresh unique instance name (nothing is sent)

A method is any `@mesh.method` of the agent class; an unknown or unmarked name is answered by the
worker with `method_not_found` (404), a name that cannot be a method by the bridge, the same way.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mesh import subjects
from mesh.client import MeshClient
from mesh.methods import check_method
from services.http.errors import NotFound
from services.http.routes import JSON, address, bridge_of, read_json_body


async def call_method(request: Request) -> Response:
    agent_type, name = address(request)
    method = check_method(request.path_params["method"])
    bridge = bridge_of(request)
    body = await read_json_body(request, bridge.max_body)
    return Response(await bridge.call(agent_type, name, body, bridge.config.timeout, method=method), media_type=JSON)


async def create_instance(request: Request) -> Response:
    """A new instance of a served type: 201, `Location: /agents/{type}/{name}`, `{"type", "name"}`."""
    agent_type = subjects.check_type(request.path_params["type"])
    if await bridge_of(request).catalog.find(agent_type) is None:
        raise NotFound(f"no worker serves agent type {agent_type}")
    name = MeshClient.new_name(agent_type)
    return JSONResponse({"type": agent_type, "name": name}, status_code=201, headers={"Location": f"/agents/{agent_type}/{name}"})
