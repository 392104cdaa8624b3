"""Mesh agents as SDK tools: the model calls a tool, the request goes over NATS to an instance.

    add = agent_tool("counter", request_model=Add, instance="demo",
                     description="Add to the shared counter; returns the new total.")
    Agent(name="Assistant", tools=[add], ...)

The call is an ordinary mesh request made inside the LLM agent's turn, so the turn's deadline,
trace id and call chain travel with it (they flow through the contextvar `current_turn` into the
tasks the SDK runs tools in), and it reaches the instance in whatever worker hosts it. A mesh error
does not end the run: the model receives `{"error": {"code", "status", "message"}}` as the tool
result and can react to it.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

import orjson
import pydantic
from pydantic import BaseModel

from mesh import subjects, wire
from mesh.client import MeshClient
from mesh.errors import MeshError, SchemaMismatch

if TYPE_CHECKING:
    from agents import FunctionTool
    from agents.tool_context import ToolContext

current_client: contextvars.ContextVar[MeshClient | None] = contextvars.ContextVar("mesh_current_client", default=None)
"""The mesh client of the LLM turn running now; set by `LLMAgent` around each run."""


def agent_tool(
    agent_type: str,
    *,
    description: str,
    name: str | None = None,
    request_model: type[BaseModel] | None = None,
    instance: str | None = None,
    needs_approval: bool = False,
    timeout: float | None = None,
    client: MeshClient | None = None,
) -> FunctionTool:
    """An SDK `FunctionTool` that calls `agent_type` over the mesh.

    `instance` fixes the instance name; without it the model chooses one (an `instance` argument).
    `request_model` is the callee's request model; its JSON schema is what the model fills in.
    `client` is only needed outside an `LLMAgent` turn.
    """
    from agents import FunctionTool

    subjects.check_type(agent_type)
    request_schema: dict[str, Any] = (
        request_model.model_json_schema() if request_model is not None else {"description": "JSON request body"}
    )
    if instance is None:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                "instance": {"type": "string", "description": f"Name of the {agent_type} instance to call."},
                "request": request_schema,
            },
            "required": ["instance", "request"],
            "additionalProperties": False,
        }
    elif request_model is not None:
        schema = request_schema
    else:
        schema = {
            "type": "object",
            "properties": {"request": request_schema},
            "required": ["request"],
            "additionalProperties": False,
        }

    async def invoke(ctx: ToolContext[Any], arguments: str) -> str:
        mesh = client or current_client.get()
        if mesh is None:
            raise RuntimeError(f"tool {tool_name} ran outside a mesh turn and has no client")
        try:
            args = orjson.loads(arguments or "{}")
            target = instance if instance is not None else str(args.get("instance", ""))
            payload = args if (instance is not None and request_model is not None) else args.get("request")
            if request_model is not None:
                try:
                    payload = request_model.model_validate(payload).model_dump(mode="json")
                except pydantic.ValidationError as exc:
                    raise SchemaMismatch(f"arguments do not match {request_model.__name__}: {exc}") from exc
            reply = await mesh.call(agent_type, target, payload, timeout=timeout)
        except MeshError as err:
            return orjson.dumps({"error": err.to_wire()}).decode()
        except orjson.JSONDecodeError:
            return orjson.dumps({"error": {"code": "bad_json", "message": "tool arguments are not JSON"}}).decode()
        return wire.dumps(reply).decode()

    tool_name = name or f"call_{agent_type.replace('-', '_')}"
    return FunctionTool(
        name=tool_name,
        description=description,
        params_json_schema=schema,
        on_invoke_tool=invoke,
        strict_json_schema=False,
        needs_approval=needs_approval,
    )
