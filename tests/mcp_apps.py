"""An LLM agent that uses an MCP server, and a small MCP server with a side effect, for the MCP client
tests (in-process, and in `mesh worker` processes as `--app mcp_apps`).

The agent's offline policy reads the user's message as `<tool> <argument>`: `calculate 6 * 7` calls
the server's `calculate` with `{"expression": "6 * 7"}`, `record hello` calls `record` with
`{"note": "hello"}` (which needs a person's approval); with the tool's output it answers `done: ...`.
Its server's URL is `McpUser.mcp_url`, from `MESH_TEST_MCP_URL` in a worker process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mesh.llm import LLMAgent

if TYPE_CHECKING:
    import agents
    from agents.items import TResponseOutputItem
    from agents.mcp import MCPServer
    from mcp.server.lowlevel import Server

    from mesh.models import OfflineView


def tool_policy(view: OfflineView) -> Sequence[TResponseOutputItem]:
    if view.tool_outputs:
        return view.say(f"done: {view.tool_outputs[-1]}")
    tool, _, argument = view.last_user_text.partition(" ")
    if tool == "calculate" and tool in view.tools:
        return view.call("calculate", {"expression": argument})
    if tool == "record" and tool in view.tools:
        return view.call("record", {"note": argument})
    return view.say(f"no tool for {view.last_user_text!r}; tools: {sorted(view.tools)}")


class McpUser(LLMAgent):
    """Uses the MCP server at `mcp_url`; its `record` tool needs approval."""

    type = "mcpuser"
    mcp_url: ClassVar[str] = os.environ.get("MESH_TEST_MCP_URL", "")
    mcp_connect_timeout = 5.0

    def build_mcp_servers(self) -> list[MCPServer]:
        from agents.mcp import MCPServerStreamableHttp

        return [
            MCPServerStreamableHttp(
                params={"url": self.mcp_url, "timeout": 5},
                name="tally",
                client_session_timeout_seconds=5,
                require_approval={"always": {"tool_names": ["record"]}},
            )
        ]

    def build_agent(self) -> agents.Agent[Any]:
        import agents

        from mesh.models import OfflineModel

        return agents.Agent(name="Tool User", model=OfflineModel(tool_policy), mcp_servers=self.mcp_servers)


class Tally:
    """An MCP server (the `mcp` package's low-level one) with `calculate` and `record`; `notes` is what
    `record` got."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def build(self) -> Server[Any]:
        import mcp_types as types
        from mcp.server.lowlevel import Server

        from services.demo_mcp import calculate

        def tool(name: str, argument: str, description: str) -> types.Tool:
            schema = {"type": "object", "properties": {argument: {"type": "string"}}, "required": [argument]}
            return types.Tool(name=name, description=description, input_schema=schema)

        tools = [
            tool("calculate", "expression", "Evaluate arithmetic."),
            tool("record", "note", "Record a note (once per approval)."),
        ]

        async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
            return types.ListToolsResult(tools=tools)

        async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
            args = params.arguments or {}
            if params.name == "calculate":
                text = calculate(str(args.get("expression", "")))
            else:
                self.notes.append(str(args.get("note", "")))
                text = f"recorded {self.notes[-1]} (#{len(self.notes)})"
            return types.CallToolResult(content=[types.TextContent(text=text)])

        return Server("tally", on_list_tools=list_tools, on_call_tool=call_tool)


AGENTS = [McpUser]
