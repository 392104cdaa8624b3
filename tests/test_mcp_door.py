"""The mesh as an MCP server: the official `mcp` client over the bridge's `/mcp` (a real uvicorn) and
over `mesh mcp --stdio` (a real subprocess), and an openai-agents agent using the mesh through
`MCPServerStreamableHttp` (a scripted model calls the tool)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from services.demo import Counter, Echo
from services.triage import Clerk

ROOT = Path(__file__).parent.parent


@pytest.fixture
async def served(mesh_factory):
    return await mesh_factory([Counter, Echo, Clerk])


def text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def check_the_counter_tools(client: Client, instance: str) -> None:
    """What `Done when` 1 asks of every MCP transport: list, call twice, an error as isError, reset."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {"counter", "echo", "clerk", "counter__reset", "mesh__approvals", "mesh__decide_approval"} <= set(tools)
    schema = tools["counter"].input_schema
    assert schema["required"] == ["instance", "request"]
    assert schema["properties"]["request"]["properties"]["add"]["type"] == "integer"
    assert "request" not in tools["counter__reset"].input_schema["properties"]  # reset takes no payload

    first = await client.call_tool("counter", {"instance": instance, "request": {"add": 2}})
    second = await client.call_tool("counter", {"instance": instance, "request": {"add": 3}})
    assert not first.is_error and not second.is_error
    assert first.structured_content == {"value": 2} and second.structured_content == {"value": 5}
    assert text(second) == '{"value":5}'

    mismatch = await client.call_tool("counter", {"instance": instance, "request": {"add": "many"}})
    assert mismatch.is_error
    assert mismatch.structured_content["error"]["code"] == "schema_mismatch"
    assert text(mismatch).startswith("schema_mismatch: ")
    no_instance = await client.call_tool("counter", {"request": {"add": 1}})
    assert no_instance.is_error and no_instance.structured_content["error"]["code"] == "bad_request"
    unknown = await client.call_tool("nosuchtype", {"instance": instance, "request": {}})
    assert unknown.is_error and unknown.structured_content["error"]["code"] == "no_responders"
    missing = await client.call_tool("counter__nope", {"instance": instance})
    assert missing.is_error and missing.structured_content["error"]["code"] == "method_not_found"

    reset = await client.call_tool("counter__reset", {"instance": instance})
    assert reset.structured_content == {"value": 0}
    dotted = await client.call_tool("counter.reset", {"instance": instance})  # the spelling works too
    assert dotted.structured_content == {"value": 0}


async def test_the_official_client_uses_the_counter_over_streamable_http(served, http_factory) -> None:
    bridge = await http_factory(timeout=5.0)
    async with Client(f"{bridge.url}/mcp") as client:
        await check_the_counter_tools(client, "mcp-http")
    async with Client(f"{bridge.url}/mcp", mode="legacy") as client:  # 2025 clients: the initialize handshake
        result = await client.call_tool("counter", {"instance": "mcp-http", "request": {"add": 1}})
        assert result.structured_content == {"value": 1}


async def test_mcp_takes_the_bridges_bearer_token_and_checks_the_origin(served, http_factory) -> None:
    bridge = await http_factory(tokens=("s3cret",))
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        refused = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        foreign = await http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"authorization": "Bearer s3cret", "origin": "https://evil.example"},
        )
        assert foreign.status_code == 403 and foreign.json()["code"] == "forbidden"
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer s3cret"}) as http2:
        async with Client(streamable_http_client(f"{bridge.url}/mcp", http_client=http2)) as client:
            result = await client.call_tool("counter", {"instance": "authed", "request": {"add": 4}})
            assert result.structured_content == {"value": 4}


async def test_approvals_are_listed_and_decided_through_mcp(served, http_factory, mesh_client) -> None:
    bridge = await http_factory(timeout=20.0)
    async with Client(f"{bridge.url}/mcp") as client:
        paused = await client.call_tool("clerk", {"instance": "desk", "request": "add 5 to counter mcp-clerk"})
        assert paused.structured_content["status"] == "awaiting_approval"
        listed = await client.call_tool("mesh__approvals", {"type": "clerk", "instance": "desk"})
        (pending,) = listed.structured_content["pending"]
        assert pending["tool"] == "add_to_counter"
        done = await client.call_tool(
            "mesh__decide_approval", {"type": "clerk", "instance": "desk", "id": pending["id"], "decision": "approve"}
        )
        assert done.structured_content["status"] == "completed"
        assert done.structured_content["decision"]["by"] == "mcp"
        again = await client.call_tool(
            "mesh__decide_approval", {"type": "clerk", "instance": "desk", "id": pending["id"], "decision": "approve"}
        )
        assert again.is_error and again.structured_content["error"]["code"] == "approval_decided"
        nothing = await client.call_tool("mesh__approvals", {"type": "counter", "instance": "x"})
        assert nothing.structured_content == {"pending": [], "decisions": []}
    assert await mesh_client.state("counter", "mcp-clerk") == {"value": 5}


async def test_the_official_client_uses_the_counter_through_mesh_mcp_stdio(served, nats_server) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "services.cli", "mcp", "--stdio"],
        env={
            **os.environ,
            "NATS_URL": nats_server.url,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
        cwd=str(ROOT),
    )
    async with Client(params) as client:  # the client starts the process and stops it on exit
        await check_the_counter_tools(client, "mcp-stdio")


async def test_an_openai_agents_agent_uses_the_mesh_through_mcp_server_streamable_http(served, http_factory, mesh_client) -> None:
    from agents import Agent, RunConfig, Runner
    from agents.mcp import MCPServerStreamableHttp
    from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call

    bridge = await http_factory(timeout=5.0)
    model = ScriptedModel(
        [
            ModelStep(output=[function_call("counter", {"instance": "sdk", "request": {"add": 40}}, call_id="c1")]),
            ModelStep(output=[function_call("counter", {"instance": "sdk", "request": {"add": 2}}, call_id="c2")]),
            ModelStep(output=[assistant_message("The counter is at 42.")]),
        ]
    )
    async with MCPServerStreamableHttp(params={"url": f"{bridge.url}/mcp"}, cache_tools_list=True, name="mesh") as mesh:
        agent = Agent(name="Assistant", instructions="Use the mesh's counters.", model=model, mcp_servers=[mesh])
        result = await Runner.run(agent, "Add 40 and then 2 to counter sdk.", run_config=RunConfig(tracing_disabled=True))
    assert result.final_output == "The counter is at 42."
    outputs = [item.output for item in result.new_items if item.type == "tool_call_output_item"]
    assert '{"value":40}' in str(outputs[0]) and '{"value":42}' in str(outputs[1])  # what the model saw
    assert await mesh_client.state("counter", "sdk") == {"value": 42}
