"""Durable sends against real nats-server and real `mesh worker` processes: no loss, no double effect."""

from __future__ import annotations

import asyncio
import json

from durable_support import APP, drained, env, mesh_cli, owner_of, value, value_reaches, wait_log, worker_id

from mesh import bus, subjects
from mesh.testing import eventually

TOTAL = 2000


async def test_2000_durable_sends_survive_two_sigkills_exactly_once(nats_server, mesh_client, worker_factory):
    workers = [await worker_factory(nats_server.url, app=APP, env=env()) for _ in range(2)]
    for w in workers:
        await wait_log(w, "durable.started")
    sent = 0

    async def send_all() -> None:
        nonlocal sent
        for i in range(TOTAL):
            await mesh_client.send_durable("counter", "demo", {"add": 1}, msg_id=f"load-{i}")
            sent += 1
            if i % 20 == 19:
                await asyncio.sleep(0.03)  # spread the load over a few seconds so the kills land mid-stream

    sender = asyncio.create_task(send_all())
    for threshold in (400, 1100):
        await eventually(lambda t=threshold: value_reaches(mesh_client, "counter", "demo", t), timeout=60)
        owner = await owner_of(mesh_client, "counter.demo")
        victim = next((w for w in workers if w.process.poll() is None and worker_id(w) == owner), workers[-1])
        await victim.kill()  # SIGKILL: turns in flight and unacked deliveries are lost with it
        workers.remove(victim)
        restarted = await worker_factory(nats_server.url, app=APP, env=env())
        await wait_log(restarted, "durable.started")
        workers.append(restarted)
    await sender
    assert sent == TOTAL
    await eventually(lambda: drained(mesh_client, "counter", "demo"), timeout=90)
    assert await value(mesh_client, "counter", "demo") == TOTAL
    await asyncio.sleep(2.5)  # longer than ack_wait: a stray redelivery would show up now
    assert await value(mesh_client, "counter", "demo") == TOTAL


async def test_a_message_id_takes_effect_once_even_after_every_worker_restarted(nats_server, mesh_client, worker_factory):
    """The processed-ids record is saved with the state, so it outlives the worker that wrote it."""
    worker = await worker_factory(nats_server.url, app=APP, env=env())
    headers = {subjects.HEADER_MSG_ID: "once-1"}

    async def deliver() -> object:
        msg = await bus.request(
            mesh_client.nc, subjects.agent_subject("counter", "dedupe"), b'{"add": 5}', timeout=10, headers=headers
        )
        return json.loads(msg.data)

    assert await deliver() == {"value": 5}
    assert await deliver() is None  # a redelivery: answered without running the handler
    await worker.terminate()
    await worker_factory(nats_server.url, app=APP, env=env())
    assert await deliver() is None
    assert await mesh_client.call("counter", "dedupe", {"add": 1}) == {"value": 6}
    assert await deliver() is None  # a later write without that id kept the record


async def test_messages_to_one_instance_run_in_stored_order(nats_server, mesh_client, worker_factory):
    for _ in range(2):
        await wait_log(await worker_factory(nats_server.url, app=APP, env=env(PICKY_FIXED="1")), "durable.started")
    for n in range(150):
        await mesh_client.send_durable("picky", "ordered", {"n": n})

    async def all_ran() -> dict:
        state = await mesh_client.state("picky", "ordered")
        assert state is not None and state["ok"] == 150, state
        return state

    state = await eventually(all_ran, timeout=30)
    assert state["seen"] == list(range(150))


async def test_mesh_send_stores_once_per_id_and_rejects_bad_input(nats_server, mesh_client, worker_factory):
    await wait_log(await worker_factory(nats_server.url, app=APP, env=env()), "durable.started")
    first = await mesh_cli(nats_server.url, "send", "counter/cli", '{"add": 2}', "--id", "cli-1")
    assert first.returncode == 0, first.stderr
    again = await mesh_cli(nats_server.url, "send", "counter/cli", '{"add": 2}', "--id", "cli-1")
    assert again.returncode == 0 and json.loads(again.stdout)["seq"] == json.loads(first.stdout)["seq"]
    bad = await mesh_cli(nats_server.url, "send", "counter/cli", "{not json")
    assert bad.returncode != 0 and "[bad_json]" in bad.stderr
    bad_name = await mesh_cli(nats_server.url, "send", "Not A Type/x", "1")
    assert bad_name.returncode != 0 and "[name_invalid]" in bad_name.stderr
    assert await eventually(lambda: value_reaches(mesh_client, "counter", "cli", 2), timeout=30) == 2
    assert await mesh_client.call("counter", "cli", {"add": 1}) == {"value": 3}  # still serving
