"""Absolute deadlines: a request whose caller has given up never runs, however long it waited.

`Mesh-Deadline` (unix ms on the caller's clock) travels next to `Mesh-Timeout-Ms`; a worker starts
a turn only while `now + max_clock_skew < Mesh-Deadline` and never later than `Mesh-Timeout-Ms`
after it read the request; nested calls pass the caller's deadline on unchanged.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from mesh import Agent, MeshClient, current_turn, subjects
from mesh.bus import NatsOptions, connect
from mesh.testing import eventually
from services.demo import Counter

TESTS = Path(__file__).parent
WORKER_ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]), "MESH_LOG_LEVEL": "debug"}


class Clock(Agent[None]):
    """Tells what deadline its turn got: the caller's `Mesh-Deadline` and the seconds left."""

    type = "clock"

    async def on_request(self, request: Any) -> dict[str, Any]:
        turn = current_turn.get()
        assert turn is not None
        return {"deadline_ms": turn.deadline_ms, "remaining": turn.remaining()}


class Relay(Agent[None]):
    """Calls `clock/x` (with `{"timeout": s}` if given) and returns what the clock saw."""

    type = "relay"

    async def on_request(self, request: dict[str, Any]) -> Any:
        return await self.call("clock", "x", None, timeout=request.get("timeout"))


def epoch_ms(offset: float = 0.0) -> str:
    return str(int((time.time() + offset) * 1000))


async def raw_call(client: MeshClient, subject: str, data: bytes, headers: dict[str, str], wait: float = 5.0) -> Any:
    """One request, exactly as given (no retries, no headers added), and its decoded reply or error code."""
    msg = await client.nc.request(subject, data, timeout=wait, headers=headers)
    if msg.headers and subjects.HEADER_MESH_ERROR in msg.headers:
        return msg.headers[subjects.HEADER_MESH_ERROR]
    return orjson.loads(msg.data)


async def test_a_request_past_its_callers_deadline_never_runs(mesh_factory, mesh_client) -> None:
    await mesh_factory([Counter, Clock])
    subject = subjects.agent_subject("counter", "late")
    add = b'{"add": 1}'
    # Plenty of relative time, but the caller's own clock says it gave up a second ago.
    gone = {subjects.HEADER_TIMEOUT: "30000", subjects.HEADER_DEADLINE: epoch_ms(-1.0)}
    assert await raw_call(mesh_client, subject, add, gone) == "timeout"
    assert await raw_call(mesh_client, subjects.agent_subject("clock", "x"), b"null", gone) == "timeout"
    # Within the skew margin (0.5 s) is too late as well: the caller's clock may be ahead of ours.
    close = {subjects.HEADER_TIMEOUT: "30000", subjects.HEADER_DEADLINE: epoch_ms(0.3)}
    assert await raw_call(mesh_client, subject, add, close) == "timeout"
    assert await mesh_client.state("counter", "late") is None  # none of them ran
    fine = {subjects.HEADER_TIMEOUT: "30000", subjects.HEADER_DEADLINE: epoch_ms(5.0)}
    assert await raw_call(mesh_client, subject, add, fine) == {"value": 1}
    # Malformed: ignored, the relative deadline applies.
    assert await raw_call(mesh_client, subject, add, {subjects.HEADER_DEADLINE: "soon"}) == {"value": 2}


async def test_the_turn_deadline_is_the_earlier_of_the_two(mesh_factory, mesh_client) -> None:
    await mesh_factory([Clock])
    subject = subjects.agent_subject("clock", "x")
    seen = await raw_call(
        mesh_client, subject, b"null", {subjects.HEADER_TIMEOUT: "20000", subjects.HEADER_DEADLINE: epoch_ms(3.0)}
    )
    assert 1.5 < seen["remaining"] <= 2.5  # 3 s less the 0.5 s skew margin
    seen = await raw_call(
        mesh_client, subject, b"null", {subjects.HEADER_TIMEOUT: "2000", subjects.HEADER_DEADLINE: epoch_ms(60.0)}
    )
    assert 1.0 < seen["remaining"] <= 2.0


async def test_nested_calls_pass_the_callers_deadline_on_unchanged(mesh_factory, mesh_client) -> None:
    await mesh_factory([Clock, Relay])
    deadline = epoch_ms(8.0)
    headers = {subjects.HEADER_TIMEOUT: "8000", subjects.HEADER_DEADLINE: deadline}
    seen = await raw_call(mesh_client, subjects.agent_subject("relay", "r"), b"{}", headers)
    assert seen["deadline_ms"] == deadline  # the same value, not one recomputed (and shortened) at each hop
    # A nested call with less time of its own sends its own, earlier deadline.
    seen = await raw_call(mesh_client, subjects.agent_subject("relay", "r"), b'{"timeout": 2}', headers)
    assert int(seen["deadline_ms"]) < int(deadline) - 4000
    # MeshClient sends one with every call.
    seen = await mesh_client.call("clock", "x", None, timeout=4)
    assert abs(int(seen["deadline_ms"]) - int(epoch_ms(4.0))) < 1000


async def test_requests_held_in_a_paused_workers_socket_do_not_run_after_their_callers_gave_up(
    nats_server, worker_factory
) -> None:
    worker = await worker_factory(nats_server.url, "core_agents", WORKER_ENV)
    client = MeshClient(await connect(NatsOptions.from_url(nats_server.url)), default_timeout=5)
    try:
        assert await client.call("counter", "paused", {"add": 1}) == {"value": 1}
        os.kill(worker.process.pid, signal.SIGSTOP)
        try:
            subject = subjects.agent_subject("counter", "paused")
            for _ in range(3):  # each waits in the stopped worker's socket until its caller gives up
                headers = {subjects.HEADER_TIMEOUT: "1000", subjects.HEADER_DEADLINE: epoch_ms(1.0)}
                with pytest.raises(TimeoutError):
                    await client.nc.request(subject, b'{"add": 1}', timeout=1.0, headers=headers)
        finally:
            os.kill(worker.process.pid, signal.SIGCONT)
        await worker.wait_logged("the caller's deadline passed before the request was read")
        assert await client.call("counter", "paused", {"add": 0}, timeout=10) == {"value": 1}

        def refused_all_three() -> bool:
            assert worker.log_text().count("the caller's deadline passed before the request was read") == 3
            return True

        await eventually(refused_all_three, timeout=5)
    finally:
        await client.close()
