"""`mesh up` as users run it: every kind of request, then Ctrl-C or SIGTERM; it must stop fast and clean.

A background task that dies shows only at shutdown, as asyncio's "Task exception was never
retrieved" on stderr, or as a traceback in the log; these tests read everything the process printed.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from mail_support import Sink, compose, send
from mesh_up import MeshUp, open_mesh_up

from mesh import MeshClient, NatsOptions, SchemaMismatch
from mesh.testing import eventually

pytestmark = pytest.mark.slow

# What asyncio, Python and the logs print when a task died unseen or was dropped while pending.
SIGNS_OF_A_LOST_TASK = (
    "Traceback",
    "exception was never retrieved",
    "Task was destroyed but it is pending",
    "was never awaited",
)
STOP_WITHIN = 1.5  # seconds from the signal to the exit of an idle `mesh up`
CTRL_C = {"how": signal.SIGINT, "whole_group": True}  # a terminal sends SIGINT to the whole foreground group
SIGTERM = {"how": signal.SIGTERM, "whole_group": False}  # `kill`, Docker and Kubernetes send it to the process


def trouble(output: str) -> list[str]:
    """What shows a lost task, a traceback or an error-level log line, each with the lines after it."""
    found = []
    lines = output.splitlines()
    for number, line in enumerate(lines):
        if any(sign in line for sign in SIGNS_OF_A_LOST_TASK):
            end = number + 1
            while end < len(lines) and lines[end].startswith((" ", "\t")):  # a traceback's frames
                end += 1
            found.append("\n".join(lines[number : end + 1]))  # and the exception line after them
        elif line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("level") in ("error", "critical"):
                found.append(line)
    return found


async def states(response: httpx.Response) -> AsyncIterator[Any]:
    """The `state` of each state message on a live view (SSE)."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data = orjson.loads(line.removeprefix("data:"))
            if isinstance(data, dict) and "state" in data:
                yield data["state"]


async def bus_traffic(up: MeshUp) -> None:
    """Calls, a bad call, a durable send and offline LLM runs over the bus, as `MeshClient` makes them."""
    async with await MeshClient.connect(NatsOptions.from_url(up.nats_url)) as client:
        assert await client.call("counter", "bus", {"add": 1}) == {"value": 1}
        with pytest.raises(SchemaMismatch):
            await client.call("counter", "bus", {"add": "one"})
        await client.send_durable("counter", "durable", {"add": 3}, msg_id="health-1")
        assert await eventually(lambda: client.state("counter", "durable"), timeout=30) == {"value": 3}
        answer = await client.call("triage", "alice", "What is the capital of France?", timeout=60)
        assert answer["status"] == "completed" and answer["model"] == "offline-demo", answer
        paused = await client.call("clerk", "desk", "add 5 to counter t1", timeout=60)  # its expiry timer stays armed
        assert paused["status"] == "awaiting_approval", paused


async def http_traffic(up: MeshUp) -> None:
    """A POST, a bad POST and a state read through the HTTP bridge."""
    async with httpx.AsyncClient(base_url=up.http_url, timeout=30) as http:
        assert (await http.post("/agents/counter/web", json={"add": 2})).json() == {"value": 2}
        assert (await http.post("/agents/counter/web", content=b"{not json")).status_code == 400
        assert (await http.get("/agents/counter/web/state")).json()["state"] == {"value": 2}


async def live_and_mail_traffic(up: MeshUp, sink: Sink) -> None:
    """A WebSocket live view that sends a request, an SSE view that sees a change, and a mail."""
    async with websockets.connect(f"{up.ws_url}/agents/counter/ws/ws") as ws:
        assert orjson.loads(await ws.recv())["type"] == "state"
        await ws.send(orjson.dumps({"type": "request", "id": 1, "body": {"add": 1}}).decode())
        async for message in ws:
            reply = orjson.loads(message)
            if reply["type"] == "reply":
                assert reply == {"type": "reply", "id": 1, "body": {"value": 1}}
                break
    async with httpx.AsyncClient(base_url=up.http_url, timeout=30) as http:
        async with http.stream("GET", "/agents/counter/sse/events") as response, aclosing(states(response)) as seen:
            assert await anext(seen) is None  # never saved yet
            assert (await http.post("/agents/counter/sse", json={"add": 4})).json() == {"value": 4}
            assert await anext(seen) == {"value": 4}
    assert up.smtp_port is not None
    code, reply = await send(up.smtp_port, compose(to="echo+x@localhost", body="ping by mail"), rcpts=["echo+x@localhost"])
    assert code == 250, reply
    (answer,) = await sink.wait_for(1, timeout=30)
    assert answer.get_content().strip() == "ping by mail"


async def test_a_full_session_of_every_kind_of_request_leaves_no_dead_task(tmp_path: Path, sink: Sink) -> None:
    async with open_mesh_up(tmp_path / "store", relay_port=sink.port) as up:
        await bus_traffic(up)
        await http_traffic(up)
        await live_and_mail_traffic(up, sink)
        # Ctrl-C while a dashboard still watches an instance: the open stream must not stop the stop.
        async with httpx.AsyncClient(base_url=up.http_url, timeout=30) as http:
            async with http.stream("GET", "/agents/counter/web/events") as response, aclosing(states(response)) as seen:
                assert await anext(seen) == {"value": 2}
                await up.stop(**CTRL_C)
    output = up.output()
    assert up.process.returncode == 0, output[-5000:]
    assert '"worker.stopped"' in output, output[-5000:]
    assert not trouble(output), "\n\n".join(trouble(output))


@pytest.mark.parametrize("stop", [CTRL_C, SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_an_idle_mesh_up_exits_within_1_5_s_of_ctrl_c_or_sigterm_without_a_traceback(
    tmp_path: Path, sink: Sink, stop: dict[str, Any]
) -> None:
    async with open_mesh_up(tmp_path / "store", relay_port=sink.port) as up:
        await bus_traffic(up)
        await http_traffic(up)
        # Every client has gone: the process is idle (an approval timer is still armed).
        took = await up.stop(**stop)
    output = up.output()
    assert up.process.returncode == 0, output[-5000:]
    assert not trouble(output), "\n\n".join(trouble(output))
    assert took < STOP_WITHIN, f"{took:.2f} s from {stop['how'].name} to the exit (at most {STOP_WITHIN} s):\n{output[-3000:]}"
