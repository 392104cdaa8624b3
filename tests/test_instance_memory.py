"""What an idle instance costs its worker in memory: the activation benchmark's 100,000 first
touches must fit in 300 MB, so a few hundred bytes per instance matter.

The caller runs in the same process, so what it keeps (its bounded subject cache, the names it
made) is filtered out by traceback: only the worker's growth is counted."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from pydantic import BaseModel

from mesh import Agent, bus
from mesh.bus import NatsServer
from mesh.client import MeshClient
from mesh.runtime import Runtime

INSTANCES = 1_000
CALLER_FRAMES = [tracemalloc.Filter(False, client_file, all_frames=True) for client_file in ("*/mesh/client.py", __file__)]


def worker_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> int:
    """Bytes the worker side kept between two snapshots, whatever the caller kept left out."""
    stats = after.filter_traces(CALLER_FRAMES).compare_to(before.filter_traces(CALLER_FRAMES), "filename")
    return sum(s.size_diff for s in stats)


class Count(BaseModel):
    n: int = 0


class Tally(Agent[Count]):
    type = "tally"

    async def on_request(self, request: dict[str, int]) -> Count:
        self.state.n += request["add"]
        return self.state


async def test_an_idle_instance_that_took_a_request_id_holds_under_2_5_kb(nats_server: NatsServer) -> None:
    worker_nc = await bus.connect(bus.NatsOptions.from_url(nats_server.url))
    client = MeshClient(await bus.connect(bus.NatsOptions.from_url(nats_server.url)), owner_cache=0)
    try:
        async with Runtime(worker_nc, [Tally]) as runtime:

            async def touch(first: int) -> None:
                for start in range(first, first + INSTANCES, 50):
                    await asyncio.gather(*(client.call("tally", f"t{i}", {"add": 1}) for i in range(start, start + 50)))

            await touch(0)  # warm up: buffers, caches and tables that do not grow per instance
            gc.collect()
            tracemalloc.start(6)
            try:
                before = tracemalloc.take_snapshot()
                await touch(INSTANCES)
                gc.collect()
                grown = worker_growth(before, tracemalloc.take_snapshot())
            finally:
                tracemalloc.stop()
            assert len(runtime.activations) == 2 * INSTANCES
            assert grown / INSTANCES < 2_500, f"{grown / INSTANCES:.0f} bytes per instance"  # ~2,150 (3,929 with deques)
    finally:
        await client.close()
        await worker_nc.close()
