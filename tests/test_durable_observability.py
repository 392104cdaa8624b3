"""Durable delivery in the flight recorder and the metrics: schedule firings, dead letters, backlog."""

import asyncio
import json

from core_agents import AGENTS

from mesh import Runtime
from mesh.bus import NatsOptions, connect
from mesh.delivery import DurableDelivery
from mesh.durable import DurableOptions
from mesh.metrics import DEAD_LETTERS, DURABLE_BACKLOG
from mesh.recorder import FlightRecorder


async def test_schedule_firings_and_dead_letters_are_events_and_metrics(nats_server, mesh_client) -> None:
    nc = await connect(NatsOptions.from_url(nats_server.url))
    recorder = FlightRecorder(nc)
    await recorder.start()
    events = await mesh_client.nc.subscribe("events.counter.>")
    dead_before = DEAD_LETTERS.labels("counter")._value.get()
    runtime = Runtime(nc, AGENTS, observers=[recorder])
    await runtime.start()
    delivery = DurableDelivery(runtime, DurableOptions(max_attempts=1, fetch_wait=0.2))
    await delivery.start()
    try:
        await mesh_client.send_durable("counter", "bad", {"add": "not a number"})  # dead-lettered at once
        await mesh_client.schedule("counter", "tick", "every-second", {"add": 1}, every=1)
        seen: dict[tuple[str, str], dict] = {}
        async with asyncio.timeout(20):
            while ("bad", "dead_letter") not in seen or ("tick", "schedule") not in seen:
                msg = await events.next_msg(timeout=20)
                _, _, token, kind = msg.subject.split(".")
                seen.setdefault((token, kind), json.loads(msg.data))
        assert seen[("bad", "dead_letter")]["error_code"] == "schema_mismatch"
        assert seen[("bad", "dead_letter")]["attempts"] == 1
        fired = seen[("tick", "schedule")]
        assert fired["schedule"].startswith("schedules.counter.tick.") and fired["trace_id"]
        assert ("tick", "turn") in seen or (await events.next_msg(timeout=5)).subject == "events.counter.tick.turn"
        assert DEAD_LETTERS.labels("counter")._value.get() - dead_before == 1
        assert DURABLE_BACKLOG.labels("counter")._value.get() == 0  # everything delivered
        await mesh_client.cancel_schedule("counter", "tick", "every-second")
    finally:
        await events.unsubscribe()  # unread messages would hold the client's drain
        await delivery.stop(grace=2)
        await runtime.stop(grace=2)
        await recorder.stop()
        await nc.close()
