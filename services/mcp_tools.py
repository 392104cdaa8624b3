"""The mesh as MCP tools: what the `/mcp` door of the HTTP bridge and `mesh mcp --stdio` serve.

Tools, built from discovery (`services.catalog`) each time a client lists them:

- `<type>`: one per agent type, arguments `{"instance": <name>, "request": <the type's request
  schema>}`: a request to `agents.<type>.<instance>`;
- `<type>__<method>`: one per `@mesh.method`, arguments `{"instance", "request"}` (no `request` when
  the method takes no payload): the same request with `Mesh-Method: <method>`. `<type>.<method>` is
  accepted too when called, but not listed: OpenAI's and Anthropic's APIs reject tool names with a
  dot, and MCP clients such as openai-agents hand tool names to the model unchanged;
- `mesh__approvals` and `mesh__decide_approval`, when a served type has approvals (LLM agents): list
  an instance's pending approvals, approve or reject one (the paused run then resumes).

Every mesh error is a tool result with `isError` and `structuredContent` `{"error": {"code",
"status", "message"}}` (the text says `<code>: <message>`), never a protocol failure, so a model
can read it and react. Nothing here keeps state between calls: any replica serves any request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from mesh import subjects, wire
from mesh.client import MeshClient
from mesh.errors import MeshError, RequestError
from mesh.version import __version__
from services.catalog import AgentType, Catalog

SEPARATOR = "__"
APPROVALS_TOOL = "mesh__approvals"
DECIDE_TOOL = "mesh__decide_approval"
INSTANCE = {
    "type": "string",
    "minLength": 1,
    "maxLength": 256,
    "description": "Instance name: the same name always reaches the same instance and its state.",
}
INSTRUCTIONS = (
    "Each tool named after an agent type sends one request to one instance of that type; tools named "
    "<type>__<method> call a method of an instance. An instance keeps its state between calls, so use the "
    "same instance name to continue with it."
)

Principal = Callable[[ServerRequestContext[Any, Any]], str]


class MeshTools:
    """Lists and calls the mesh's tools through one client; `by` names who decides approvals."""

    def __init__(self, client: MeshClient, catalog: Catalog, *, timeout: float) -> None:
        self.client = client
        self.catalog = catalog
        self.timeout = timeout

    async def list_tools(self) -> list[types.Tool]:
        served = await self.catalog.types()
        tools: dict[str, types.Tool] = {}
        for agent in served:
            tools.setdefault(agent.type, _type_tool(agent))
            for method in agent.methods.values():
                name = f"{agent.type}{SEPARATOR}{method.name}"
                schema = _arguments(method.request_schema, payload=method.request_schema is not None)
                description = method.description or f"Method {method.name} of agent type {agent.type}."
                tools.setdefault(name, types.Tool(name=name, description=description, input_schema=schema))
        approval_types = [t.type for t in served if t.admits_op("approvals")]
        if approval_types:
            tools[APPROVALS_TOOL] = _approvals_tool(approval_types)
            tools[DECIDE_TOOL] = _decide_tool(approval_types)
        return list(tools.values())

    async def call_tool(self, name: str, arguments: dict[str, Any] | None, *, by: str) -> types.CallToolResult:
        """Run one tool; a mesh error (unknown type or method included) comes back as an `isError` result."""
        args = arguments or {}
        try:
            if name == APPROVALS_TOOL:
                return _result(await self._approvals(args))
            if name == DECIDE_TOOL:
                return _result(await self._decide(args, by))
            agent_type, method = _split(name, await self.catalog.types())
            instance = _instance(args)
            request = args.get("request")
            return _result(await self.client.call(agent_type, instance, request, timeout=self.timeout, method=method))
        except MeshError as err:
            return _error(err)

    async def _approvals(self, args: dict[str, Any]) -> Any:
        agent_type = subjects.check_type(str(args.get("type", "")))
        instance = _instance(args)
        if not await self.catalog.supports_approvals(agent_type):
            return {"pending": [], "decisions": []}  # never send control messages to other agents
        return await self.client.call(agent_type, instance, {"op": "approvals"}, timeout=self.timeout)

    async def _decide(self, args: dict[str, Any], by: str) -> Any:
        agent_type = subjects.check_type(str(args.get("type", "")))
        instance = _instance(args)
        decision, approval_id, reason = args.get("decision"), args.get("id"), args.get("reason")
        if decision not in ("approve", "reject") or not isinstance(approval_id, str) or not isinstance(reason, str | None):
            raise RequestError('arguments must be {"type", "instance", "id", "decision": "approve"|"reject", "reason"?}')
        if not await self.catalog.supports_approvals(agent_type):
            raise RequestError(f"agent type {agent_type} has no approvals")
        message: dict[str, Any] = {"op": decision, "id": approval_id, "by": by}
        if reason is not None:
            message["reason"] = reason
        return await self.client.call(agent_type, instance, message, timeout=self.timeout)


def build_server(tools: MeshTools, principal: Principal) -> Server[Any]:
    """A low-level MCP server (the tools are only known at run time) serving `tools`."""

    async def on_list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=await tools.list_tools())

    async def on_call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        return await tools.call_tool(params.name, params.arguments, by=principal(ctx))

    return Server(
        "agent-mesh",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )


def _split(name: str, served: list[AgentType]) -> tuple[str, str | None]:
    """`counter` -> (counter, None); `counter__reset` or `counter.reset` -> (counter, reset). A type
    may itself contain `__`, so what is served decides first."""
    for agent in served:
        if name == agent.type:
            return name, None
        for separator in (SEPARATOR, "."):
            if name.startswith(agent.type + separator) and name[len(agent.type) + len(separator) :] in agent.methods:
                return agent.type, name[len(agent.type) + len(separator) :]
    for separator in (".", SEPARATOR):  # not served now: the mesh answers with the error to show
        agent_type, found, method = name.partition(separator)
        if found:
            return agent_type, method
    return name, None


def _instance(args: dict[str, Any]) -> str:
    instance = args.get("instance")
    if not isinstance(instance, str):
        raise RequestError('the argument "instance" (the instance name, a string) is required')
    subjects.encode_name(instance)
    return instance


def _arguments(request_schema: dict[str, Any] | None, *, payload: bool = True) -> dict[str, Any]:
    """`{"instance", "request"}` with the request schema inline; its `$defs` move to the root, so
    `#/$defs/...` references still resolve."""
    schema: dict[str, Any] = {"type": "object", "properties": {"instance": INSTANCE}, "required": ["instance"]}
    if payload:
        request = dict(request_schema or {})
        defs = request.pop("$defs", None)
        request.setdefault("description", "The request body: JSON matching the agent's request schema.")
        schema["properties"]["request"] = request
        schema["required"].append("request")
        if defs:
            schema["$defs"] = defs
    return schema


def _type_tool(agent: AgentType) -> types.Tool:
    description = agent.description or f"Agent type {agent.type}."
    return types.Tool(
        name=agent.type,
        description=f"{description} Sends one request to instance <instance> of {agent.type} and returns its reply.",
        input_schema=_arguments(agent.request_schema),
    )


def _approvals_tool(approval_types: list[str]) -> types.Tool:
    return types.Tool(
        name=APPROVALS_TOOL,
        description="List the pending approvals (tool calls waiting for a person) and recent decisions of an LLM agent instance.",
        input_schema={
            "type": "object",
            "properties": {"type": {"enum": approval_types}, "instance": INSTANCE},
            "required": ["type", "instance"],
        },
    )


def _decide_tool(approval_types: list[str]) -> types.Tool:
    return types.Tool(
        name=DECIDE_TOOL,
        description="Approve or reject a pending approval of an LLM agent instance; the paused run resumes "
        "and its reply is returned.",
        input_schema={
            "type": "object",
            "properties": {
                "type": {"enum": approval_types},
                "instance": INSTANCE,
                "id": {"type": "string", "description": "The approval id, as mesh__approvals lists it."},
                "decision": {"enum": ["approve", "reject"]},
                "reason": {"type": "string", "description": "Why; a rejection's reason is told to the model."},
            },
            "required": ["type", "instance", "id", "decision"],
        },
    )


def _result(reply: Any) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(text=wire.dumps(reply).decode())],
        structured_content=reply if isinstance(reply, dict) else None,
    )


def _error(err: MeshError) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(text=f"{err.code}: {err.message}")],
        structured_content={"error": err.to_wire()},
        is_error=True,
    )
