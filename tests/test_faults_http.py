"""HTTP callers that retry one `Idempotency-Key` per add, through a paused owner: every key is
applied exactly once and every caller eventually gets its key's one answer.

The bridge (real uvicorn) waits at most 2 s for a reply, so adds to the paused owner's instances
time out (the outcome is unknown to the bridge) and callers retry the same key, as HTTP clients
should: the bridge must keep the key's claim, then resolve it with the mesh's request id (the
key's), never run the add a second time, and never lose one it acknowledged.
"""

import asyncio
import time
import uuid
from collections import Counter as Tally

import httpx
import pytest
from fault_cluster import PYTHONPATH, recovered

from mesh.errors import MeshError, MeshTimeout
from mesh.faults import History, owner_pid, pause_for, run_load
from mesh.testing import eventually

pytestmark = pytest.mark.slow

RETRIED = {409, 502, 503, 504}  # in progress, or not answered (yet): retry the same key
PAUSE = 8.0


async def test_http_callers_retrying_one_idempotency_key_per_add_through_a_paused_owner_apply_every_key_once(
    nats_server, worker_factory, http_factory, mesh_client
) -> None:
    env = {"PYTHONPATH": PYTHONPATH, "MESH_LEASE_TTL": "3"}
    workers = [await worker_factory(nats_server.url, "core_agents", env) for _ in range(2)]
    bridge = await http_factory(timeout=2.0)
    names = [f"h{i}" for i in range(4)]
    history = History()
    attempts: list[int] = []
    answers: Tally[int] = Tally()
    stop = asyncio.Event()

    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:

        async def add_once(name: str) -> int:
            """One logical add: the same key until it gets a 200."""
            key = uuid.uuid4().hex
            deadline = time.monotonic() + 60
            for tries in range(1, 10_000):
                try:
                    response = await http.post(f"/agents/counter/{name}", json={"add": 1}, headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    response = None
                if response is not None:
                    answers[response.status_code] += 1
                    if response.status_code == 200:
                        attempts.append(tries)
                        return int(response.json()["value"])
                    if response.status_code not in RETRIED:
                        raise MeshError(f"key {key}: {response.status_code} {response.text[:300]}")
                if time.monotonic() > deadline:
                    raise MeshTimeout(f"key {key} got no 200 within 60 s")
                await asyncio.sleep(0.25)  # the caller's pace between retries
            raise AssertionError("unreachable")

        load = asyncio.create_task(run_load(add_once, names, history, stop, callers=6, deadline=70, via="http"))
        try:
            await eventually(lambda: all(history.acknowledged(n) for n in names), timeout=30)
            pids = Tally([await owner_pid(mesh_client.nc, "counter", n) for n in names])
            victim = max((w for w in workers if w.process.pid in pids), key=lambda w: pids[w.process.pid])
            pause = await pause_for(victim.process.pid, PAUSE)
            await eventually(lambda: recovered(history, names, pause.ended), timeout=60)
        finally:
            stop.set()
            await load

    finals = {n: ((await mesh_client.state("counter", n)) or {}).get("value", 0) for n in names}
    retried = sum(1 for a in attempts if a > 1)
    print(f"\n{history.summary()}; {retried} keys needed retries (most {max(attempts)}); HTTP answers {dict(answers)}")
    history.assert_counters(finals)
    assert set(history.codes(via="http")) == {"ok"}, history.codes(via="http")
    assert sum(finals.values()) == len(history.calls)  # every key applied once
    assert retried > 0  # the pause made callers retry keys whose first attempt timed out
