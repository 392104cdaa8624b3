"""Live views: SSE and WebSocket clients see state changes and events as they happen."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import websockets
from http_agents import Notes

from mesh.testing import eventually
from services.demo import Counter


@pytest.fixture
async def bridge(mesh_factory, http_factory):
    await mesh_factory([Counter, Notes])
    return await http_factory(heartbeat=0.5)


class SseClient:
    """Reads `text/event-stream` into (id, event, data) tuples; comment lines count as heartbeats."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()
        self.heartbeats = 0
        self.last_id: str | None = None

    async def next(self) -> tuple[str | None, str, Any]:
        """The next message; heartbeats keep a stream open, so the wait has its own deadline."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(10):
            async for line in self.lines:
                if line.startswith(":"):
                    self.heartbeats += 1
                elif line == "":
                    if "data" in fields:
                        self.last_id = fields.get("id", self.last_id)
                        return fields.get("id"), fields.get("event", "message"), orjson.loads(fields["data"])
                    fields.clear()
                else:
                    key, _, value = line.partition(":")
                    fields[key] = value.removeprefix(" ")
        raise EOFError


async def ws_collect(ws, kinds: set[str]) -> dict[str, dict[str, Any]]:
    """The first message of each kind in `kinds`, in whatever order they arrive."""
    found: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(10):
        while set(found) != kinds:
            message = orjson.loads(await ws.recv())
            if message["type"] in kinds:
                found.setdefault(message["type"], message)
    return found


@contextlib.asynccontextmanager
async def sse(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[SseClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url, headers=headers or {}) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            yield SseClient(response)


async def gather(events: SseClient, count: int, state: Any) -> tuple[list[tuple[str | None, str, Any]], tuple]:
    """Read until `count` events and a state message equal to `state` arrived (in any interleaving)."""
    seen, final = [], None
    async with asyncio.timeout(10):
        while len(seen) < count or final is None:
            message = await events.next()
            if message[1] == "event":
                seen.append(message)
            elif message[2]["state"] == state:
                final = message
    assert len(seen) == count, seen
    return seen, final


async def ws_next(ws, kind: str) -> dict[str, Any]:
    """The next message of `kind`, skipping others (pings arrive every heartbeat)."""
    async with asyncio.timeout(10):
        while True:
            message = orjson.loads(await ws.recv())
            if message["type"] == kind:
                return message


async def test_websocket_and_sse_both_see_a_post_by_another_client_within_a_second(bridge) -> None:
    async with (
        sse(f"{bridge.url}/agents/counter/live/events") as events,
        websockets.connect(f"{bridge.ws_url}/agents/counter/live/ws") as ws,
    ):
        # Both get the current state on connect (never saved yet: null).
        assert (await events.next())[1:] == ("state", {"revision": 0, "state": None})
        assert await ws_next(ws, "state") == {"type": "state", "revision": 0, "state": None}
        async with httpx.AsyncClient(base_url=bridge.url) as other:
            assert (await other.post("/agents/counter/live", json={"add": 2})).json() == {"value": 2}
        async with asyncio.timeout(1.0):
            _, kind, data = await events.next()
            pushed = await ws_next(ws, "state")
        assert kind == "state" and data["state"] == {"value": 2}
        assert pushed["state"] == {"value": 2} and pushed["revision"] == data["revision"] > 0

    # A new client gets the current state at once.
    async with websockets.connect(f"{bridge.ws_url}/agents/counter/live/ws") as ws:
        assert (await ws_next(ws, "state"))["state"] == {"value": 2}


async def test_sse_carries_events_with_ids_and_resumes_after_last_event_id_without_gaps(bridge) -> None:
    url = f"{bridge.url}/agents/notes/n1/events"
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        async with sse(url) as events:
            await events.next()  # initial state
            await http.post("/agents/notes/n1", json="a")
            await http.post("/agents/notes/n1", json="b")
            seen, _ = await gather(events, 2, {"notes": ["a", "b"]})
            last_id = events.last_id
        assert [m[2]["data"]["note"] for m in seen] == ["a", "b"]
        assert all(m[2]["kind"] == "noted" and m[2]["seq"] > 0 for m in seen)

        # While no one listens, the instance moves on; the reconnecting client misses nothing.
        await http.post("/agents/notes/n1", json="c")
        await http.post("/agents/notes/n1", json="d")
        async with sse(url, headers={"Last-Event-ID": last_id}) as events:
            resumed, _ = await gather(events, 2, {"notes": ["a", "b", "c", "d"]})
            assert [m[2]["data"]["note"] for m in resumed] == ["c", "d"]

        # A garbled Last-Event-ID starts from now: the current state, nothing replayed.
        async with sse(url, headers={"Last-Event-ID": "garbage"}) as events:
            assert (await events.next())[2]["state"] == {"notes": ["a", "b", "c", "d"]}


async def test_idle_connections_get_heartbeats(bridge) -> None:
    async with sse(f"{bridge.url}/agents/counter/idle/events") as events:
        await events.next()
        reader = asyncio.create_task(events.next())  # no event comes; it counts the heartbeats it reads past
        try:
            await eventually(lambda: events.heartbeats >= 2, timeout=5)  # one every 0.5 s
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    async with websockets.connect(f"{bridge.ws_url}/agents/counter/idle/ws") as ws:
        assert (await ws_next(ws, "ping")) == {"type": "ping"}


async def test_websocket_sends_requests_and_bad_messages_get_errors_on_an_open_socket(bridge) -> None:
    async with websockets.connect(f"{bridge.ws_url}/agents/notes/w/ws") as ws:
        await ws_next(ws, "state")
        await ws.send(orjson.dumps({"type": "request", "id": 1, "body": "hello"}).decode())
        got = await ws_collect(ws, {"reply", "event"})  # the event is emitted during the turn, before the reply
        assert got["reply"] == {"type": "reply", "id": 1, "body": {"count": 1}}
        event = got["event"]
        assert event["kind"] == "noted" and event["data"] == {"note": "hello", "count": 1}

        await ws.send("not json")
        assert (await ws_next(ws, "error"))["problem"]["code"] == "bad_json"
        await ws.send(orjson.dumps({"type": "nonsense"}).decode())
        assert (await ws_next(ws, "error"))["problem"]["code"] == "bad_request"
        await ws.send(orjson.dumps({"type": "request", "id": "x", "body": 5}).decode())
        error = await ws_next(ws, "error")
        assert error["id"] == "x" and error["problem"]["code"] == "schema_mismatch"
        await ws.send(orjson.dumps({"type": "request", "id": 2, "body": "again"}).decode())
        assert (await ws_next(ws, "reply"))["body"] == {"count": 2}
    with pytest.raises(websockets.InvalidStatus) as rejected:
        async with websockets.connect(f"{bridge.ws_url}/agents/Bad.Type/x/ws"):
            pass
    assert rejected.value.response.status_code == 403


async def test_closed_live_connections_release_their_subscriptions(bridge) -> None:
    nc = bridge.bridge.nc
    baseline = len(nc._subs)  # nats-py keeps every live subscription here
    for _ in range(3):
        async with sse(f"{bridge.url}/agents/notes/gone/events") as events:
            await events.next()
        async with websockets.connect(f"{bridge.ws_url}/agents/notes/gone/ws") as ws:
            await ws_next(ws, "state")
    await eventually(lambda: len(nc._subs) <= baseline, timeout=10)
