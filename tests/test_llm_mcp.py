"""LLM agents as MCP clients: tools of a real MCP server (the `mcp` package, served by real uvicorn in
this process), approval-gated MCP tools across a worker restart (real `mesh worker` processes), and
servers that are down or hang."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from mcp_apps import McpUser, Tally

from mesh import bus
from mesh.bus import NatsServer, free_port
from mesh.client import MeshClient
from mesh.errors import AgentError, ApprovalDecided
from mesh.runtime import RuntimeOptions
from mesh.testing import WorkerFactory, eventually
from services import triage
from services.demo_mcp import open_demo_mcp, serve_streamable_http

TESTS = Path(__file__).parent
OFFLINE = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "MESH_MODEL": ""}


@pytest.fixture
async def tally():
    found = Tally()
    async with serve_streamable_http(found.build()) as url:
        yield found, url


async def test_an_llm_agent_calls_a_tool_of_a_real_mcp_server(tally, mesh_factory, mesh_client, monkeypatch) -> None:
    _, url = tally
    monkeypatch.setattr(McpUser, "mcp_url", url)
    await mesh_factory([McpUser])
    events = await bus.subscribe(mesh_client.nc, "events.mcpuser.calc.>")
    reply = await mesh_client.call("mcpuser", "calc", "calculate 6 * 7", timeout=30)
    assert reply["status"] == "completed" and reply["output"] == "[offline demo model] done: 42"
    kinds = []
    async with asyncio.timeout(5):
        while "tool_output" not in kinds:
            msg = await bus.next_message(events, 5)
            assert msg is not None
            kinds.append(msg.subject.rsplit(".", 1)[1])
            if kinds[-1] == "tool_called":
                assert json.loads(msg.data)["tool"] == "calculate"
    await bus.unsubscribe(events)


async def test_the_triage_math_tutor_uses_the_demo_calculator(mesh_factory, mesh_client) -> None:
    async with open_demo_mcp() as url:
        triage.configure(triage.ModelSettings(calculator_url=url))
        try:
            await mesh_factory([triage.Triage])
            reply = await mesh_client.call("triage", "math", "What is 12 * 7?", timeout=30)
        finally:
            triage.configure(triage.ModelSettings())
    assert reply["agent"] == "Math Tutor"
    assert reply["output"] == "[offline demo model] Math Tutor: 12 * 7 = 84 (by the calculator MCP server)."


async def test_an_approval_gated_mcp_tool_pauses_is_approved_on_a_restarted_worker_and_runs_once(
    tally, tmp_path: Path, worker_factory: WorkerFactory
) -> None:
    notes, url = tally[0].notes, tally[1]
    env = {**OFFLINE, "PYTHONPATH": str(TESTS), "MESH_TEST_MCP_URL": url}
    server = NatsServer(tmp_path / "store")
    await server.start()
    try:
        first = await worker_factory(server.url, app="mcp_apps", env=env)
        async with MeshClient(await bus.connect(bus.NatsOptions.from_url(server.url))) as client:
            paused = await client.call("mcpuser", "desk", "record hello", timeout=30)
            assert paused["status"] == "awaiting_approval"
            (approval,) = paused["approvals"]
            assert approval["tool"] == "record" and json.loads(approval["arguments"]) == {"note": "hello"}
            assert notes == []  # nothing ran before the approval

            assert await first.terminate() == 0
            await worker_factory(server.url, app="mcp_apps", env=env)
            done = await client.call("mcpuser", "desk", {"op": "approve", "id": approval["id"], "by": "test"}, timeout=30)
            assert done["status"] == "completed", done
            assert done["output"] == "[offline demo model] done: recorded hello (#1)"
            assert done["decision"]["by"] == "test"
            with pytest.raises(ApprovalDecided):
                await client.call("mcpuser", "desk", {"op": "approve", "id": approval["id"], "by": "test"}, timeout=30)
        assert notes == ["hello"]  # once
    finally:
        server.stop()


async def test_a_dead_mcp_server_is_a_clear_error_and_the_instance_keeps_serving(mesh_factory, mesh_client, monkeypatch) -> None:
    monkeypatch.setattr(McpUser, "mcp_url", f"http://127.0.0.1:{free_port()}/mcp")  # nothing listens there
    await mesh_factory([McpUser])
    started = time.monotonic()
    with pytest.raises(AgentError) as caught:
        await mesh_client.call("mcpuser", "dead", "calculate 1 + 1", timeout=20)
    assert "MCP server 'tally' is unreachable" in caught.value.message
    assert time.monotonic() - started < 10
    assert await mesh_client.call("mcpuser", "dead", {"op": "approvals"}) == {"pending": [], "decisions": []}


async def test_a_hung_mcp_server_fails_the_run_before_the_callers_deadline(mesh_factory, mesh_client, monkeypatch) -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    hung = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    try:
        monkeypatch.setattr(McpUser, "mcp_url", f"http://127.0.0.1:{hung.sockets[0].getsockname()[1]}/mcp")
        await mesh_factory([McpUser])
        started = time.monotonic()
        with pytest.raises(AgentError) as caught:
            await mesh_client.call("mcpuser", "hung", "calculate 1 + 1", timeout=3)
        assert "MCP server 'tally' did not connect within" in caught.value.message
        assert time.monotonic() - started < 3
        assert await mesh_client.call("mcpuser", "hung", {"op": "approvals"}, timeout=3) == {"pending": [], "decisions": []}
    finally:
        for writer in held:
            writer.close()
        hung.close()
        await hung.wait_closed()


async def test_mcp_connections_close_when_the_instance_is_evicted_and_when_the_worker_stops(
    tally, mesh_factory, mesh_client, monkeypatch
) -> None:
    _, url = tally
    monkeypatch.setattr(McpUser, "mcp_url", url)
    runtime = await mesh_factory([McpUser], RuntimeOptions(idle_timeout=0.5))
    await mesh_client.call("mcpuser", "idle", "calculate 2 + 2", timeout=30)
    agent = runtime.activations["mcpuser.idle"].agent
    assert isinstance(agent, McpUser)
    (server,) = agent.mcp_servers
    assert server.session is not None  # connected while active
    await eventually(lambda: "mcpuser.idle" not in runtime.activations, timeout=10)
    await eventually(lambda: server.session is None, timeout=5)  # evicted: closed

    await mesh_client.call("mcpuser", "busy", "calculate 3 + 3", timeout=30)
    busy = runtime.activations["mcpuser.busy"].agent
    assert isinstance(busy, McpUser)
    (other,) = busy.mcp_servers
    assert other.session is not None
    await runtime.stop()
    assert other.session is None  # the worker stopped: closed
