"""Conversation memory: per instance, across requests and restarts, long and bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_apps import Recall

from mesh import bus
from mesh.bus import NatsServer
from mesh.client import MeshClient
from mesh.memory import MemorySession, open_memory_stream
from mesh.models import OFFLINE_PREFIX
from mesh.testing import WorkerFactory

TESTS = str(Path(__file__).parent)
WORKER_ENV = {"PYTHONPATH": TESTS, "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}


def said(reply: dict[str, Any]) -> str:
    assert reply["status"] == "completed", reply
    text: str = reply["output"]
    assert text.startswith(OFFLINE_PREFIX)
    return text[len(OFFLINE_PREFIX) :]


async def test_an_instance_remembers_its_conversation_and_others_do_not(mesh_factory: Any, mesh_client: MeshClient) -> None:
    await mesh_factory([Recall])
    assert said(await mesh_client.call("recall", "a", "my name is Ada")) == "1 user messages: my name is Ada"
    assert said(await mesh_client.call("recall", "a", "what is my name?")) == (
        "2 user messages: my name is Ada | what is my name?"
    )
    assert said(await mesh_client.call("recall", "b", "hello")) == "1 user messages: hello"


async def test_memory_survives_restarting_workers_and_nats_server(tmp_path: Path, worker_factory: WorkerFactory) -> None:
    server = NatsServer(tmp_path / "store")
    await server.start()
    try:
        worker = await worker_factory(server.url, app="llm_apps", env=WORKER_ENV)
        async with MeshClient(await bus.connect(bus.NatsOptions.from_url(server.url))) as client:
            await client.call("recall", "a", "one", timeout=60)
            await client.call("recall", "a", "two", timeout=60)
            await client.call("recall", "b", "other", timeout=60)
        await worker.kill()
        server.stop()

        server = NatsServer(tmp_path / "store", port=server.port)
        await server.start()
        worker = await worker_factory(server.url, app="llm_apps", env=WORKER_ENV)
        async with MeshClient(await bus.connect(bus.NatsOptions.from_url(server.url))) as client:
            reply = await client.call("recall", "a", "three", timeout=60)
            other = await client.call("recall", "b", "again", timeout=60)
        await worker.terminate()
    finally:
        server.stop()
    assert said(reply) == "3 user messages: one | two | three"
    assert said(other) == "2 user messages: other | again"


async def test_two_thousand_long_exchanges_stay_usable_within_the_bound(mesh_factory: Any, mesh_client: MeshClient) -> None:
    await mesh_factory([Recall])
    session = MemorySession(mesh_client.nc, "recall", "long", max_items=Recall.memory_max_items)
    await open_memory_stream(mesh_client.nc.jetstream())
    filler = "x" * 2000
    items: list[Any] = []
    for i in range(2000):
        items.append({"role": "user", "content": f"question {i:04d} {filler}"})
        items.append({"role": "assistant", "content": f"answer {i:04d} {filler}"})
    await session.add_items(items)  # ~8 MB written; the bound keeps the last 1000 items
    assert await session.count() == 1000

    reply = await mesh_client.call("recall", "long", "and now?", timeout=60)

    # the model saw the newest 500 stored exchanges plus the new question, in order
    assert said(reply) == "501 user messages; first: question 1500 xxxxxxxxxx; last: and now?"
    assert await session.count() == 1000  # still bounded after the turn appended its items
    stored = await session.get_items()
    assert stored[-2] == {"role": "user", "content": "and now?"}
    assert stored[-1]["role"] == "assistant"


async def test_memory_reads_start_at_a_user_message_and_support_limit_pop_and_clear(
    mesh_client: MeshClient,
) -> None:
    await open_memory_stream(mesh_client.nc.jetstream())
    session = MemorySession(mesh_client.nc, "recall", "unit", max_items=3)
    assert await session.get_items() == []
    assert await session.pop_item() is None
    await session.add_items(
        [
            {"role": "user", "content": "q1"},
            {"type": "function_call", "call_id": "c1", "name": "t", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "r"},
            {"role": "user", "content": "q2"},
        ]
    )
    # the bound of 3 cut q1 away; the orphan tool output before q2 is not handed to the model
    assert await session.count() == 3
    assert await session.get_items() == [{"role": "user", "content": "q2"}]
    await session.add_items([{"role": "assistant", "content": "a2"}])
    assert await session.get_items(limit=1) == []
    assert await session.get_items(limit=2) == [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    assert await session.pop_item() == {"role": "assistant", "content": "a2"}
    await session.clear_session()
    assert await session.get_items() == []
    other = MemorySession(mesh_client.nc, "recall", "unit-other")
    assert await other.get_items() == []


async def test_clear_memory_forgets_the_conversation(mesh_factory: Any, mesh_client: MeshClient) -> None:
    await mesh_factory([Recall])
    await mesh_client.call("recall", "c", "remember this")
    assert await mesh_client.call("recall", "c", {"op": "clear_memory"}) == {"cleared": True}
    assert said(await mesh_client.call("recall", "c", "fresh start")) == "1 user messages: fresh start"
