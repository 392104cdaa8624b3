"""Agent-owned connections: `/agents/{type}/{name}/connect` on real bridges, workers and clients."""

from __future__ import annotations

import asyncio
import socket

import httpx
import orjson
import pytest
import websockets
from connection_agents import Plain, Tracker
from connection_support import WORKER_ENV, recv_json

from mesh import subjects
from mesh.bus import NatsOptions, connect
from mesh.connections import connections_bucket
from mesh.testing import eventually
from services.demo_live import Room


async def test_room_on_two_bridges_shares_messages_and_gives_a_late_joiner_the_history(
    nats_server, worker_factory, bridge_factory
) -> None:
    await worker_factory(nats_server.url, "connection_agents", WORKER_ENV)
    one, two = await bridge_factory(), await bridge_factory()
    async with websockets.connect(f"{one.ws_url}/agents/room/lobby/connect?name=ann") as ann:
        await ann.send("hello from bridge one")
        said = {"from": "ann", "text": "hello from bridge one"}
        assert await recv_json(ann) == said  # the sender hears itself too
        async with websockets.connect(f"{two.ws_url}/agents/room/lobby/connect?name=bob") as bob:
            assert await recv_json(bob) == said  # the history, first
            await bob.send("hi from bridge two")
            answer = {"from": "bob", "text": "hi from bridge two"}
            assert await recv_json(ann) == answer
            assert await recv_json(bob) == answer
            await ann.send("bye")
            assert await recv_json(bob) == {"from": "ann", "text": "bye"}
            assert await recv_json(ann) == {"from": "ann", "text": "bye"}
        async with websockets.connect(f"{two.ws_url}/agents/room/lobby/connect?name=carol") as carol:
            history = [await recv_json(carol) for _ in range(3)]
        assert history == [said, answer, {"from": "ann", "text": "bye"}]
    async with httpx.AsyncClient(base_url=one.url) as http:
        state = (await http.get("/agents/room/lobby/state")).json()["state"]
    assert [line["text"] for line in state["lines"]] == ["hello from bridge one", "hi from bridge two", "bye"]


async def test_on_connect_finishes_before_each_connections_first_message_with_100_opened_at_once(
    mesh_factory, http_factory, mesh_client
) -> None:
    await mesh_factory([Tracker])
    bridge = await http_factory()
    frames = 5

    async def client() -> list[dict[str, object]]:
        async with websockets.connect(f"{bridge.ws_url}/agents/tracker/order/connect") as ws:
            for n in range(frames):  # sent at once, without waiting for anything
                await ws.send(str(n))
            return [await recv_json(ws, 30) for _ in range(frames)]

    answers = await asyncio.gather(*(client() for _ in range(100)))
    for answer in answers:  # every frame was handled after on_connect, in the order sent
        assert answer == [{"n": str(n), "connected": True} for n in range(frames)]
    state = await eventually(lambda: _all_closed(mesh_client, 100), timeout=20)
    assert len(state["log"]) == 100
    for events in state["log"].values():
        assert events == ["connect", *map(str, range(frames)), "close"]


async def _all_closed(mesh_client, count: int) -> dict[str, object] | None:
    state = await mesh_client.state("tracker", "order")
    return state if state is not None and len(state["closed"]) == count else None


async def test_connections_keep_working_after_the_owning_worker_is_killed(nats_server, worker_factory, bridge_factory) -> None:
    workers = [await worker_factory(nats_server.url, "connection_agents", WORKER_ENV) for _ in range(2)]
    bridge = await bridge_factory()
    async with (
        websockets.connect(f"{bridge.ws_url}/agents/room/crash/connect?name=ann") as ann,
    ):
        await ann.send("before")
        assert await recv_json(ann) == {"from": "ann", "text": "before"}
        async with websockets.connect(f"{bridge.ws_url}/agents/room/crash/connect?name=bob") as bob:
            assert await recv_json(bob) == {"from": "ann", "text": "before"}
            owner = await _owner_pid(nats_server.url, "room", "crash")
            victim = next(w for w in workers if w.process.pid == owner)
            await victim.kill()
            # The next frame waits for the takeover (the dead worker's lease runs out), then the new
            # owner reads the connections back and reaches both clients on the bridge.
            await bob.send("after the crash")
            expected = {"from": "bob", "text": "after the crash"}
            assert await recv_json(bob, 30) == expected
            assert await recv_json(ann, 30) == expected
            await ann.send("still here")
            assert await recv_json(bob) == {"from": "ann", "text": "still here"}
    assert await _owner_pid(nats_server.url, "room", "crash") != owner


async def _owner_pid(url: str, agent_type: str, name: str) -> int:
    nc = await connect(NatsOptions.from_url(url))
    try:
        js = nc.jetstream()
        directory = await js.key_value(subjects.DIRECTORY_BUCKET)
        owner = (await directory.get(subjects.instance_key(agent_type, name))).value.decode()
        lease = await (await js.key_value(subjects.WORKERS_BUCKET)).get(owner)
        return int(orjson.loads(lease.value)["pid"])
    finally:
        await nc.close()


async def test_a_dead_bridges_connections_get_on_close_within_the_lease_time(
    nats_server, worker_factory, bridge_factory, mesh_client
) -> None:
    await worker_factory(nats_server.url, "connection_agents", WORKER_ENV)
    doomed = await bridge_factory({"MESH_HTTP_LEASE_TTL": "2"})
    survivor = await bridge_factory()
    clients = [await websockets.connect(f"{doomed.ws_url}/agents/tracker/reaped/connect") for _ in range(3)]
    try:
        async with websockets.connect(f"{survivor.ws_url}/agents/tracker/reaped/connect") as kept:
            await kept.send("ping")
            assert await recv_json(kept) == {"n": "ping", "connected": True}
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            await doomed.kill()
            # Lease 2 s, the reaper sweeps every second: on_close within about 3 s (6 allowed).
            state = await eventually(lambda: _closed_count(mesh_client, "reaped", 3), timeout=6, interval=0.1)
            assert loop.time() - killed_at < 6
            assert sorted(state["closed"].values()) == [1006, 1006, 1006]
            # The connection on the other bridge is untouched and still served.
            await kept.send("pong")
            assert await recv_json(kept) == {"n": "pong", "connected": True}
            reply = await mesh_client.call("tracker", "reaped", {"text": "to all"})
            assert reply == {"sent": 1, "open": 1}
            assert await kept.recv() == "to all"
    finally:
        for ws in clients:
            ws.transport.abort()
    bucket = await connections_bucket(mesh_client.nc)
    assert await bucket.keys(f"bridge.{_bridge_of(doomed.log_text())}.") == []


async def _closed_count(mesh_client, name: str, count: int) -> dict[str, object] | None:
    state = await mesh_client.state("tracker", name)
    return state if state is not None and len(state["closed"]) >= count else None


def _bridge_of(log: str) -> str:
    for line in log.splitlines():
        if "connections.started" in line:
            return str(orjson.loads(line)["bridge"])
    raise AssertionError(f"no connections.started in:\n{log[-2000:]}")


async def test_a_client_that_does_not_read_is_closed_with_1013_and_its_queue_dropped(
    mesh_factory, http_factory, mesh_client
) -> None:
    await mesh_factory([Tracker])
    bridge = await http_factory(send_queue_bytes=256 * 1024)
    # A small receive buffer (no autotuning up to tcp_rmem's 32 MiB) and no reading: the bridge's
    # writes block once the kernel's buffers are full, and its queue fills.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (bridge.config.host, bridge.config.port))
    url = f"{bridge.ws_url}/agents/tracker/slow/connect"
    async with websockets.connect(url, sock=sock, max_queue=1, max_size=None) as ws:
        await ws.send("flood 1500")  # 24 MiB: more than the kernel's socket buffers and the 256 KiB allowed
        state = await eventually(lambda: _closed_count(mesh_client, "slow", 1), timeout=20)
        assert list(state["closed"].values()) == [1013]
        hub = bridge.server.config.app.state.connection_hub
        assert hub.links == {}  # nothing of the connection is left on the bridge
        received = 0
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(20):
                while True:
                    await ws.recv()
                    received += 1
        assert received < 1500  # what was queued was dropped, not delivered late
    # The bridge keeps serving.
    async with websockets.connect(f"{bridge.ws_url}/agents/tracker/slow/connect") as ws:
        await ws.send("hi")
        assert await recv_json(ws) == {"n": "hi", "connected": True}


async def test_bad_connections_get_clear_answers_and_the_bridge_keeps_serving(mesh_factory, http_factory, mesh_client) -> None:
    await mesh_factory([Tracker, Plain])
    bridge = await http_factory(max_body=1024)
    base = f"{bridge.ws_url}/agents"
    refused = {
        f"{base}/plain/x/connect": 404,  # a type that takes no connections
        f"{base}/nosuchtype/x/connect": 503,  # nobody serves it
        f"{base}/Bad-Type/x/connect": 400,  # not a type name
    }
    for url, status in refused.items():
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(url):
                pass
        assert info.value.response.status_code == status, url
        assert orjson.loads(info.value.response.body)["status"] == status
    async with websockets.connect(f"{base}/tracker/bad/connect") as ws:
        await ws.send("fail")  # on_message raises: closed with 4000 + 500
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4500
    async with websockets.connect(f"{base}/tracker/bad/connect") as ws:
        await ws.send("x" * 2000)  # over the 1 KiB body limit
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    async with websockets.connect(f"{base}/tracker/bad/connect") as ws:
        await ws.send(b"\x00binary")
        assert await recv_json(ws) == {"n": "\x00binary", "connected": True}
    state = await eventually(lambda: _closed_count(mesh_client, "bad", 3), timeout=10)
    assert sorted(state["closed"].values()) == [1000, 1009, 4500]


async def test_broadcast_by_tag_and_sends_to_closed_connections_are_dropped(mesh_factory, http_factory, mesh_client) -> None:
    await mesh_factory([Tracker])
    bridge = await http_factory()
    base = f"{bridge.ws_url}/agents/tracker/teams/connect"
    async with websockets.connect(f"{base}?team=red") as red, websockets.connect(f"{base}?team=blue") as blue:
        assert await mesh_client.call("tracker", "teams", {"text": "reds only", "tag": "red"}) == {"sent": 1, "open": 2}
        assert await red.recv() == "reds only"
        assert await mesh_client.call("tracker", "teams", {"text": "everyone"}) == {"sent": 2, "open": 2}
        assert await blue.recv() == "everyone"
        assert await red.recv() == "everyone"
        red_id, _ = (await mesh_client.state("tracker", "teams"))["log"]  # in the order they connected
        assert await mesh_client.call("tracker", "teams", {"text": "not red", "exclude": [red_id]}) == {"sent": 1, "open": 2}
        assert await blue.recv() == "not red"
        await red.send("ping")  # red's next frame is its own answer: "not red" never reached it
        assert await recv_json(red) == {"n": "ping", "connected": True}
    await eventually(lambda: _closed_count(mesh_client, "teams", 2))
    assert await mesh_client.call("tracker", "teams", {"text": "nobody"}) == {"sent": 0, "open": 0}


async def test_connect_needs_a_token_or_ticket_when_auth_is_on(mesh_factory, http_factory) -> None:
    await mesh_factory([Room])
    bridge = await http_factory(tokens=("secret",))
    url = f"{bridge.ws_url}/agents/room/private/connect"
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url):
            pass
    assert info.value.response.status_code == 403
    async with httpx.AsyncClient(base_url=bridge.url, headers={"Authorization": "Bearer secret"}) as http:
        ticket = (await http.post("/auth/tickets")).json()["ticket"]
    async with websockets.connect(f"{url}?ticket={ticket}&name=ann") as ws:
        await ws.send("let me in")
        assert await recv_json(ws) == {"from": "ann", "text": "let me in"}
    async with websockets.connect(url, additional_headers={"Authorization": "Bearer secret"}) as ws:
        assert await recv_json(ws) == {"from": "ann", "text": "let me in"}
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(url, additional_headers={"Authorization": "Bearer secret", "Origin": "https://evil.test"}):
            pass
