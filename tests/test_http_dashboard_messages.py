"""`GET /agents/{type}/{name}/messages`: an LLM instance's memory a page at a time, and the point of
its live feed where the page leaves off, so a reader sees every part of the conversation once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from dashboard_agents import PacedTriage, Pacer, no_pacer, use_pacer

from mesh import bus
from mesh.memory import MemorySession, open_memory_stream
from services.demo import Counter

QUESTION = "What is the capital of France?"
ANSWER = "[offline demo model] History Tutor: the capital of France is Paris."


@pytest.fixture(autouse=True)
def _unpaced() -> Any:
    yield
    no_pacer()


@contextlib.asynccontextmanager
async def events(url: str, last_event_id: str | None = None) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    """The `event` messages of an SSE live view (state messages and heartbeats skipped)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200

        async def read() -> AsyncIterator[dict[str, Any]]:
            kind, data = "", b""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    kind = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    data = line.partition(":")[2].strip().encode()
                elif line == "" and data:
                    if kind == "event":
                        yield orjson.loads(data)
                    kind, data = "", b""

        yield read()


async def take(feed: AsyncIterator[dict[str, Any]], until: str) -> list[dict[str, Any]]:
    """Events up to and including the first of kind `until`."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        async for event in feed:
            seen.append(event)
            if event["kind"] == until:
                return seen
    raise AssertionError(f"the feed ended before {until}: {[e['kind'] for e in seen]}")


def deltas(seen: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["delta"] for e in seen if e["kind"] == "text_delta"]


async def test_messages_hold_memory_and_the_cursor_replays_only_the_text_being_streamed(mesh_factory, http_factory) -> None:
    pacer = use_pacer()
    await mesh_factory([PacedTriage, Counter])
    bridge = await http_factory()
    url = f"{bridge.url}/agents/triage/alice"
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http, events(f"{url}/events") as watch:
        asking = asyncio.create_task(http.post("/agents/triage/alice", json=QUESTION))
        try:
            await _follow(http, url, watch, asking, pacer)
        finally:
            asking.cancel()
            await asyncio.gather(asking, return_exceptions=True)


async def _follow(
    http: httpx.AsyncClient, url: str, watch: AsyncIterator[dict[str, Any]], asking: asyncio.Task[httpx.Response], pacer: Pacer
) -> None:
    """Read the answer as it streams: memory holds the finished parts, the cursor the rest."""
    await pacer.release(2)
    early: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(deltas(early)) < 2:
            early.append(await anext(watch))
    assert "handoff" in [e["kind"] for e in early]  # the triage agent handed over before the tutor wrote

    page = (await http.get("/agents/triage/alice/messages")).json()
    kinds = [item["item"].get("role") or item["item"].get("type") for item in page["items"]]
    assert kinds == ["user", "function_call", "function_call_output"]  # the answer is not in memory yet
    assert page["items"][0]["item"]["content"] == QUESTION
    assert page["more"] is False and page["last_event_id"]

    async with events(f"{url}/events", page["last_event_id"]) as resumed:
        first = [await anext(resumed), await anext(resumed)]
        assert deltas(first) == ["[offline ", "demo "]  # exactly what memory lacks, from its first word
        await pacer.open()
        reply = (await asking).json()
        rest = await take(resumed, "run_completed")
    assert reply["status"] == "completed" and reply["output"] == ANSWER
    assert "".join(deltas(first + rest)) == ANSWER
    assert [e["kind"] for e in rest][-2:] == ["message_output", "run_completed"]
    assert rest[-2]["data"] == {"run_id": reply["run_id"], "agent": "History Tutor"}

    done = (await http.get("/agents/triage/alice/messages")).json()
    assert done["items"][:3] == page["items"]
    assert done["items"][-1]["item"]["content"][0]["text"] == ANSWER
    assert int(done["last_event_id"].split(".")[1]) >= rest[-1]["seq"]  # nothing left to replay


async def test_messages_page_back_and_forward_and_reject_bad_parameters(mesh_factory, http_factory) -> None:
    await mesh_factory([PacedTriage, Counter])
    bridge = await http_factory()
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        for question in (QUESTION, "What is 12 * 7?"):
            assert (await http.post("/agents/triage/bob", json=question)).json()["status"] == "completed"
        everything = (await http.get("/agents/triage/bob/messages")).json()["items"]
        assert len(everything) == 8  # per question: user, handoff call, handoff output, answer
        seqs = [item["seq"] for item in everything]
        assert seqs == sorted(seqs)

        newest = (await http.get("/agents/triage/bob/messages", params={"limit": 3})).json()
        assert newest["items"] == everything[-3:] and newest["more"] is True
        older = (await http.get("/agents/triage/bob/messages", params={"limit": 3, "before": seqs[-3]})).json()
        assert older["items"] == everything[-6:-3] and older["more"] is True
        oldest = (await http.get("/agents/triage/bob/messages", params={"limit": 3, "before": seqs[2]})).json()
        assert oldest["items"] == everything[:2] and oldest["more"] is False
        newer = (await http.get("/agents/triage/bob/messages", params={"after": seqs[4], "limit": 2})).json()
        assert newer["items"] == everything[5:7] and newer["more"] is True

        for params in ({"limit": 0}, {"limit": "x"}, {"before": 0}, {"before": 5, "after": 1}, {"limit": 1001}):
            response = await http.get("/agents/triage/bob/messages", params=params)
            assert response.status_code == 400, params
            assert response.json()["code"] == "bad_request"

        assert (await http.post("/agents/counter/c", json={"add": 1})).status_code == 200
        plain = (await http.get("/agents/counter/c/messages")).json()
        assert plain["items"] == [] and plain["more"] is False
        assert (await http.get("/agents/Bad/x/messages")).status_code == 400


async def test_the_cursor_skips_text_memory_already_holds_and_replays_text_it_does_not(nats_server, http_factory) -> None:
    """Memory stores a model turn's items when the turn ends, and the agent publishes the turn's
    events as the SDK queued them, so the last deltas may or may not be in memory yet: the route
    compares their text with memory's latest answers."""
    bridge = await http_factory()
    nc = await bus.connect(bus.NatsOptions.from_url(nats_server.url))
    try:
        js = nc.jetstream()
        await open_memory_stream(js)
        memory = MemorySession(nc, "triage", "x")
        await memory.add_items([{"role": "user", "content": QUESTION}])

        async def event(kind: str, data: dict[str, Any]) -> int:
            return (await bus.store(js, f"events.triage.x.{kind}", orjson.dumps({"run_id": "run_1", **data}))).seq

        async def cursor() -> int:
            async with httpx.AsyncClient(base_url=bridge.url) as http:
                page = (await http.get("/agents/triage/x/messages")).json()
            return int(page["last_event_id"].split(".")[1])

        switched = await event("agent_switched", {"agent": "History Tutor"})
        await event("text_delta", {"delta": "Paris "})
        written = await event("text_delta", {"delta": "it is."})
        assert await cursor() == switched  # being written: replay its deltas
        await memory.add_items([_answer("Paris it is.")])
        assert await cursor() == written  # stored: nothing to replay
        completed = await event("run_completed", {"agent": "History Tutor"})
        assert await cursor() == completed

        await memory.add_items([{"role": "user", "content": "And Spain?"}])
        await event("agent_switched", {"agent": "History Tutor"})
        await event("text_delta", {"delta": "Paris it is."})  # the same words again, in a new run
        assert await cursor() == completed + 1  # memory's answer belongs to the question before
    finally:
        await nc.close()


def _answer(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "status": "completed", "content": [{"type": "output_text", "text": text}]}
