"""The LLM agent kind itself: replies, tracing, failures and bad input."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import agents
import pytest
import structlog
from agents import OpenAIChatCompletionsModel
from agents.testing import ModelStep, ScriptedModel, assistant_message
from agents.tracing import get_trace_provider
from agents.usage import Usage
from llm_stub import ChatCompletionsStub

from mesh import subjects
from mesh.client import MeshClient
from mesh.errors import AgentError, SchemaMismatch
from mesh.llm import LLMAgent
from mesh.models import select_model
from mesh.sdk_tracing import StructlogTracingProcessor


class Scripted(LLMAgent):
    type = "scripted"
    stream = False
    model: ClassVar[ScriptedModel]

    def build_agent(self) -> agents.Agent[Any]:
        return agents.Agent(name="Scripted", instructions="Answer.", model=self.model)


async def test_reply_carries_output_agent_usage_and_run_id_and_sdk_traces_go_to_structlog_only(
    mesh_factory: Any, mesh_client: MeshClient
) -> None:
    Scripted.model = ScriptedModel(
        [
            {
                "output": [assistant_message("hello there")],
                "usage": Usage(requests=1, input_tokens=5, output_tokens=2, total_tokens=7),
            }
        ],
        emit_traces=True,
    )
    await mesh_factory([Scripted])
    trace = "0af7651916cd43dd8448eb211c80319c"
    with structlog.testing.capture_logs() as logs:
        msg = await mesh_client.nc.request(
            subjects.agent_subject("scripted", "s"),
            b'[{"role": "user", "content": "hi"}]',
            timeout=20,
            headers={subjects.HEADER_TRACEPARENT: f"00-{trace}-b7ad6b7169203331-01"},
        )
    reply = json.loads(msg.data)
    assert reply["status"] == "completed" and reply["output"] == "hello there"
    assert reply["agent"] == "Scripted" and reply["run_id"].startswith("run_")
    assert reply["usage"] == {"requests": 1, "input_tokens": 5, "output_tokens": 2, "total_tokens": 7}
    spans = [e for e in logs if e["event"] == "sdk_span.ended"]
    assert {e["span_type"] for e in spans} >= {"agent", "generation"}
    assert all(e["trace_id"] == trace for e in spans)
    processors = get_trace_provider()._multi_processor._processors  # type: ignore[attr-defined]
    assert processors and all(isinstance(p, StructlogTracingProcessor) for p in processors)
    state = await mesh_client.state("scripted", "s")
    assert (state["requests"], state["input_tokens"], state["output_tokens"]) == (1, 5, 2)
    assert state["runs"][-1]["run_id"] == reply["run_id"] and state["runs"][-1]["output"] == "hello there"


async def test_a_failing_model_is_a_structured_error_and_the_instance_keeps_serving(
    mesh_factory: Any, mesh_client: MeshClient
) -> None:
    Scripted.model = ScriptedModel([RuntimeError("model is down"), [assistant_message("back again")]])
    await mesh_factory([Scripted])
    with pytest.raises(AgentError, match="model is down"):
        await mesh_client.call("scripted", "f", "hi")
    with pytest.raises(SchemaMismatch):
        await mesh_client.call("scripted", "f", {"op": "message"})
    with pytest.raises(SchemaMismatch):
        await mesh_client.call("scripted", "f", 42)
    assert (await mesh_client.call("scripted", "f", {"op": "message", "input": "hi"}))["output"] == "back again"


class Unreachable(LLMAgent):
    type = "unreachable"
    model: ClassVar[agents.Model]

    def build_agent(self) -> agents.Agent[Any]:
        return agents.Agent(name="Unreachable", instructions="x", model=self.model)


async def test_an_openai_compatible_server_that_fails_gives_a_handler_error(mesh_factory: Any, mesh_client: MeshClient) -> None:
    async with ChatCompletionsStub() as stub:
        model = select_model(
            policy=lambda view: [], base_url=f"http://127.0.0.1:{stub.port}/wrong-prefix", api_key="k", model="m"
        )
        assert isinstance(model, OpenAIChatCompletionsModel)
        Unreachable.model = model
        await mesh_factory([Unreachable])
        try:
            with pytest.raises(AgentError, match="LLM run .* failed: NotFoundError"):
                await mesh_client.call("unreachable", "u", "hi", timeout=60)
        finally:
            await model._client.close()


async def test_an_instance_waiting_for_its_model_does_not_block_other_instances(
    mesh_factory: Any, mesh_client: MeshClient
) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(call: Any) -> Any:
        started.set()
        await release.wait()
        return [assistant_message("slow answer")]

    Scripted.model = ScriptedModel([ModelStep.respond(slow), [assistant_message("quick answer")]])
    await mesh_factory([Scripted])
    slow_call = asyncio.ensure_future(mesh_client.call("scripted", "slow", "hi"))
    await started.wait()
    quick = await mesh_client.call("scripted", "quick", "hi")
    assert quick["output"] == "quick answer" and not slow_call.done()
    release.set()
    assert (await slow_call)["output"] == "slow answer"
