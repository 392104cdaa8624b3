"""The triage demo: handoffs through the real chat-completions client, and `mesh up` offline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from llm_stub import ChatCompletionsStub
from mesh_up import MESH, open_mesh_up

from mesh import bus
from mesh.bus import NatsServer
from mesh.client import MeshClient
from mesh.models import OFFLINE_PREFIX, OfflineModel, select_model
from mesh.testing import WorkerFactory

NO_MODEL_ENV = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "MESH_MODEL": ""}


async def test_triage_routes_to_the_right_tutor_through_the_chat_completions_client(
    nats_server: NatsServer, mesh_client: MeshClient, worker_factory: WorkerFactory
) -> None:
    async with ChatCompletionsStub() as stub:
        env = {"OPENAI_BASE_URL": stub.base_url, "OPENAI_API_KEY": "test-key", "MESH_MODEL": "stub-model"}
        await worker_factory(nats_server.url, app="services.triage", env=env)

        history = await mesh_client.call("triage", "alice", "What is the capital of France?", timeout=60)
        math = await mesh_client.call("triage", "alice", "What is 12 * 7?", timeout=60)

    assert history["status"] == "completed"
    assert history["agent"] == "History Tutor"
    assert history["output"] == "Stub LLM, history: Paris is the capital of France."
    assert history["model"] == "stub-model"
    assert math["agent"] == "Math Tutor"
    assert math["output"] == "Stub LLM, math: 12 * 7 = 84."
    # triage + tutor per question, each a real chat-completions request (streamed) with usage
    assert history["usage"]["requests"] == 2 and history["usage"]["total_tokens"] == 36
    assert len(stub.requests) == 4
    assert all(r["model"] == "stub-model" and r["stream"] is True for r in stub.requests)
    first_tools = {t["function"]["name"] for t in stub.requests[0]["tools"]}
    assert first_tools == {"transfer_to_history_tutor", "transfer_to_math_tutor"}
    # the second question's first request carries the first exchange (memory)
    contents = [str(m.get("content")) for m in stub.requests[2]["messages"]]
    assert "What is the capital of France?" in contents
    assert "Stub LLM, history: Paris is the capital of France." in contents


def test_model_selection_follows_the_configuration() -> None:
    from agents import OpenAIChatCompletionsModel, OpenAIResponsesModel

    def policy(view: Any) -> list[Any]:
        return []

    assert isinstance(select_model(policy=policy), OfflineModel)
    compatible = select_model(policy=policy, base_url="http://127.0.0.1:1/v1", model="llama")
    assert isinstance(compatible, OpenAIChatCompletionsModel) and compatible.model == "llama"
    openai_model = select_model(policy=policy, api_key="sk-test")
    assert isinstance(openai_model, OpenAIResponsesModel)


async def test_mesh_up_serves_the_triage_demo_on_the_offline_model(tmp_path: Path) -> None:
    async with open_mesh_up(tmp_path / "store", env=NO_MODEL_ENV) as up:
        call = await asyncio.create_subprocess_exec(
            *MESH,
            "call",
            "--nats-url",
            up.nats_url,
            "--timeout",
            "60",
            "triage/alice",
            '"What is the capital of France?"',
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **NO_MODEL_ENV},
        )
        async with asyncio.timeout(90):
            out, err = await call.communicate()
        assert call.returncode == 0, err.decode()
        reply = json.loads(out)
        assert reply["agent"] == "History Tutor"
        assert reply["model"] == "offline-demo"
        assert reply["output"].startswith(OFFLINE_PREFIX)
        assert "Paris" in reply["output"]
        await up.stop(signal.SIGTERM, whole_group=False)
    assert up.process.returncode == 0, up.output()[-3000:]
    assert '"model": "offline-demo"' in up.output() and '"offline": true' in up.output()


async def test_offline_triage_routes_math_and_answers_the_rest_itself(
    nats_server: NatsServer, mesh_factory: Any, mesh_client: MeshClient
) -> None:
    from services.triage import Triage

    await mesh_factory([Triage])
    math = await mesh_client.call("triage", "bob", "What is 12 * 7?", timeout=60)
    other = await mesh_client.call("triage", "bob", "Tell me a joke", timeout=60)
    assert (math["agent"], math["output"]) == ("Math Tutor", OFFLINE_PREFIX + "Math Tutor: 12 * 7 = 84.")
    assert other["agent"] == "Triage Agent" and other["output"].startswith(OFFLINE_PREFIX)


async def test_events_show_the_handoff_and_the_streamed_text(
    nats_server: NatsServer, mesh_factory: Any, mesh_client: MeshClient
) -> None:
    from services.triage import Triage

    await mesh_factory([Triage])
    nc = await bus.connect(bus.NatsOptions.from_url(nats_server.url))
    try:
        sub = await nc.subscribe("events.triage.carol.>")
        reply = await mesh_client.call("triage", "carol", "What is the capital of Italy?", timeout=60)
        kinds: list[str] = []
        async with asyncio.timeout(10):
            while "run_completed" not in kinds:
                msg = await sub.next_msg(timeout=10)
                kinds.append(msg.subject.rsplit(".", 1)[1])
                data = json.loads(msg.data)
                assert data["run_id"] == reply["run_id"]
                assert "traceparent" in (msg.headers or {})
    finally:
        await nc.close()
    assert kinds.index("handoff") < kinds.index("text_delta") < kinds.index("run_completed")
    assert reply["output"] == OFFLINE_PREFIX + "History Tutor: the capital of Italy is Rome."
