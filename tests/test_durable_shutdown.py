"""SIGTERM during load: in-flight turns finish, nothing acknowledged is lost, the worker exits in time."""

from __future__ import annotations

import asyncio
import signal
import time

from durable_support import APP, drained, env, owner_of, value, wait_log, worker_id

from mesh.errors import MeshError
from mesh.testing import eventually

GRACE = 5.0
SENDS = 600


async def test_sigterm_during_load_loses_nothing_acknowledged_and_exits_within_grace(nats_server, mesh_client, worker_factory):
    url = nats_server.url
    workers = [await worker_factory(url, app=APP, env=env(MESH_SHUTDOWN_GRACE=str(GRACE))) for _ in range(2)]
    for w in workers:
        await wait_log(w, "durable.started")
    assert await mesh_client.call("slow", "s1", {"sleep": 0}) == {"done": 1}
    owner = await owner_of(mesh_client, "slow.s1")
    victim = next(w for w in workers if worker_id(w) == owner)

    stored = 0
    calls_ok = calls_tried = 0
    stop_calls = asyncio.Event()

    async def durable_load() -> None:
        nonlocal stored
        for i in range(SENDS):
            await mesh_client.send_durable("counter", "sig", {"add": 1}, msg_id=f"sig-{i}")
            stored += 1  # the send returned: JetStream acknowledged it
            if i % 20 == 19:
                await asyncio.sleep(0.05)

    async def call_load() -> None:
        nonlocal calls_ok, calls_tried
        while not stop_calls.is_set():
            calls_tried += 1
            try:
                await mesh_client.call("counter", "calls", {"add": 1}, timeout=5)
                calls_ok += 1
            except MeshError:
                await asyncio.sleep(0.05)  # unavailable while ownership moves: retry

    loads = [asyncio.create_task(durable_load()), asyncio.create_task(call_load()), asyncio.create_task(call_load())]
    await eventually(lambda: stored >= 40 and calls_ok >= 5, timeout=30)  # both loads under way
    slow_started = await mesh_client.nc.subscribe("events.slow.s1.started")
    await mesh_client.nc.flush()
    in_flight = asyncio.create_task(mesh_client.call("slow", "s1", {"sleep": 1.5}, timeout=10))
    await slow_started.next_msg(timeout=10)  # the turn is running on the victim
    await slow_started.unsubscribe()
    started = time.monotonic()
    victim.process.send_signal(signal.SIGTERM)
    code = await victim.wait(GRACE + 10)
    took = time.monotonic() - started
    assert code == 0
    assert took < GRACE + 2.5, f"worker took {took:.1f}s to exit with a {GRACE}s grace period"
    assert await in_flight == {"done": 2}  # the turn running at SIGTERM finished and replied
    await wait_log(victim, "worker.stopped")

    await loads[0]
    stop_calls.set()
    await asyncio.gather(*loads[1:])
    assert stored == SENDS
    await eventually(lambda: drained(mesh_client, "counter", "sig"), timeout=60)
    assert await value(mesh_client, "counter", "sig") == SENDS
    total = await value(mesh_client, "counter", "calls")
    assert calls_ok <= total <= calls_tried  # every acknowledged call is in the state
    assert calls_ok > 0
