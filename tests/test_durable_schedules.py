"""Schedules on nats-server message schedules: idempotent by id, survive restarts, cancel, one-shot."""

from __future__ import annotations

import asyncio
import json

from durable_support import APP, env, mesh_cli, wait_log

from mesh.client import MeshClient
from mesh.testing import eventually


async def ticks(client: MeshClient, name: str = "t1") -> int:
    state = await client.state("ticker", name)
    return 0 if state is None else int(state["ticks"])


async def ticked_more_than(client: MeshClient, count: int) -> int:
    """A probe for `eventually`."""
    now = await ticks(client)
    assert now > count, f"{now} ticks, waiting for more than {count}"
    return now


async def count_over(client: MeshClient, seconds: float) -> int:
    """Ticks during an observation window of `seconds` (a rate, so a time window is what it measures)."""
    before = await ticks(client)
    await asyncio.sleep(seconds)
    return await ticks(client) - before


async def test_every_1s_registered_twice_fires_once_per_second_across_restarts_until_cancelled(
    nats_server, mesh_client, worker_factory
):
    url = nats_server.url
    workers = [await worker_factory(url, app=APP, env=env()) for _ in range(2)]
    for w in workers:
        await wait_log(w, "durable.started")

    # The same id registered three times: twice by the agent itself, once from the CLI.
    await mesh_client.call("ticker", "t1", {"every": "1s"})
    await mesh_client.call("ticker", "t1", {"every": "1s"})
    added = await mesh_cli(
        url, "schedule", "add", "ticker/t1", "beat", "--every", "1s", "--payload", '{"by": 1}', "--method", "tick"
    )
    assert added.returncode == 0, added.stderr
    listed = [json.loads(line) for line in (await mesh_cli(url, "schedule", "ls", "ticker/t1")).stdout.splitlines()]
    assert [(s["id"], s["spec"], s["method"]) for s in listed] == [("beat", "@every 1s", "tick")]

    # A one-shot 3 s ahead, running alongside.
    await mesh_client.schedule("counter", "once", "one", {"add": 1}, delay=3)
    assert (await mesh_client.state("counter", "once")) is None  # not before its time

    await eventually(lambda: ticked_more_than(mesh_client, 0), timeout=10)
    fired = await count_over(mesh_client, 4.0)
    assert 2 <= fired <= 6, f"{fired} ticks in 4 s: a duplicated schedule would fire about 8 times"

    once = await eventually(lambda: mesh_client.state("counter", "once"), timeout=10)
    assert once == {"value": 1}
    assert (await mesh_cli(url, "schedule", "ls", "counter/once")).stdout.strip() == ""  # a fired @at is gone

    # Restart every worker and the nats-server: the schedule lives in the stream.
    for w in workers:
        assert await w.terminate() == 0
    nats_server.stop()
    await nats_server.start()
    workers = [await worker_factory(url, app=APP, env=env()) for _ in range(2)]
    for w in workers:
        await wait_log(w, "durable.started")
    before_restart = await ticks(mesh_client)
    await eventually(lambda: ticked_more_than(mesh_client, before_restart + 1), timeout=20)
    fired = await count_over(mesh_client, 3.0)
    assert 1 <= fired <= 5, f"{fired} ticks in 3 s after the restart"
    assert (await mesh_client.state("counter", "once")) == {"value": 1}  # the one-shot never fires again

    cancelled = await mesh_cli(url, "schedule", "cancel", "ticker/t1", "beat")
    assert cancelled.returncode == 0, cancelled.stderr
    await asyncio.sleep(1.5)  # a firing already stored before the cancel may still run
    assert await count_over(mesh_client, 3.0) == 0
    again = await mesh_cli(url, "schedule", "cancel", "ticker/t1", "beat")
    assert again.returncode == 1 and "no schedule beat" in again.stderr


async def test_bad_schedules_get_structured_errors(nats_server, mesh_client):
    url = nats_server.url
    too_fast = await mesh_cli(url, "schedule", "add", "ticker/t2", "fast", "--every", "100ms")
    assert too_fast.returncode == 1 and "[bad_request]" in too_fast.stderr
    naive = await mesh_cli(url, "schedule", "add", "ticker/t2", "at", "--at", "2030-01-01T09:00:00")
    assert naive.returncode == 1 and "time zone" in naive.stderr
    bad_id = await mesh_cli(url, "schedule", "add", "ticker/t2", "no.dots", "--in", "5")
    assert bad_id.returncode == 1 and "[name_invalid]" in bad_id.stderr
    assert await mesh_client.schedules("ticker") == []
