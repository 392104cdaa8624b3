"""Mesh agents as SDK tools: across worker processes, with deadline, trace and call chain."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import agents
from agents.testing import ScriptedModel, assistant_message, function_call

from mesh import Agent, subjects
from mesh.bus import NatsServer
from mesh.client import MeshClient
from mesh.context import current_turn
from mesh.llm import LLMAgent
from mesh.testing import WorkerFactory
from mesh.tools import agent_tool
from mesh.tracing import trace_id

WORKER_ENV = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "MESH_MODEL": ""}


async def test_an_llm_agent_uses_an_agent_hosted_by_another_worker_process_as_a_tool(
    nats_server: NatsServer, worker_factory: WorkerFactory, mesh_client: MeshClient
) -> None:
    await worker_factory(nats_server.url, app="services.triage:Clerk", env=WORKER_ENV)
    await worker_factory(nats_server.url, app="services.demo:Counter", env=WORKER_ENV)
    by_type = {info["name"]: info["metadata"]["mesh.worker"] for info in await mesh_client.services()}
    assert set(by_type) == {"clerk", "counter"} and by_type["clerk"] != by_type["counter"]

    await mesh_client.call("counter", "c1", {"add": 2})
    read = await mesh_client.call("clerk", "x", "read counter c1", timeout=60)
    assert read["output"].endswith('the counter replied {"value":2}.')

    paused = await mesh_client.call("clerk", "x", "add 4 to counter c1", timeout=60)
    done = await mesh_client.call("clerk", "x", {"op": "approve", "id": paused["approvals"][0]["id"]}, timeout=60)
    assert done["output"].endswith('the counter replied {"value":6}.')
    assert await mesh_client.state("counter", "c1") == {"value": 6}


class Probe(Agent[None]):
    """Replies with what its turn inherited from the caller."""

    type = "probe"

    async def on_request(self, request: Any) -> Any:
        turn = current_turn.get()
        assert turn is not None
        return {"trace_id": trace_id(turn.traceparent), "chain": list(turn.chain), "remaining": turn.remaining(), "echo": request}


class Prober(LLMAgent):
    type = "prober"
    model: ClassVar[ScriptedModel]

    def build_agent(self) -> agents.Agent[Any]:
        return agents.Agent(
            name="Prober",
            instructions="Probe.",
            model=self.model,
            tools=[
                agent_tool("probe", instance="p", description="Probe the mesh."),
                agent_tool("missing", name="call_missing", description="A type nobody serves."),
            ],
        )


async def test_tool_calls_carry_the_turns_trace_deadline_and_call_chain_and_errors_reach_the_model(
    mesh_factory: Any, mesh_client: MeshClient
) -> None:
    Prober.model = ScriptedModel(
        [
            [
                function_call("call_probe", {"request": {"q": 1}}, call_id="p1"),
                function_call("call_missing", {"instance": "m", "request": {}}, call_id="m1"),
            ],
            [assistant_message("probed")],
        ]
    )
    await mesh_factory([Prober, Probe])
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    reply = await mesh_client.nc.request(
        subjects.agent_subject("prober", "x"),
        b'"probe please"',
        timeout=20,
        headers={subjects.HEADER_TRACEPARENT: f"00-{trace}-00f067aa0ba902b7-01", subjects.HEADER_TIMEOUT: "20000"},
    )
    assert json.loads(reply.data)["output"] == "probed"
    outputs = {
        i["call_id"]: json.loads(i["output"])
        for i in Prober.model.last_call.input
        if isinstance(i, dict) and i.get("type") == "function_call_output"
    }
    probe = outputs["p1"]
    assert probe["trace_id"] == trace
    assert probe["chain"] == ["prober.x", "probe.p"]
    assert 0 < probe["remaining"] <= 20
    assert probe["echo"] == {"q": 1}
    assert outputs["m1"]["error"]["code"] == "no_responders"
