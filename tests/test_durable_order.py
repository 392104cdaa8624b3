"""Durable delivery with many messages in flight: per-instance order and exactly-once effect hold
when the delivering worker is SIGKILLed, while two workers pull, and while one message is retried."""

from __future__ import annotations

from typing import Any

from durable_support import APP, drained, env, log_events, owner_of, worker_id
from pydantic import BaseModel

from mesh import Agent, Runtime
from mesh.bus import NatsOptions, connect
from mesh.delivery import DurableDelivery
from mesh.durable import DurableOptions
from mesh.testing import eventually

INSTANCES = 3
PER_INSTANCE = 1500


async def test_killing_the_delivering_worker_with_messages_in_flight_keeps_order_and_exactly_once(
    nats_server, mesh_client, worker_factory
):
    names = [f"o{i}" for i in range(INSTANCES)]
    # All of them stored before any worker runs: the first one pinned holds hundreds unacked, dozens
    # in each mailbox, while the other pulls too (and gets nothing while the first holds the pins).
    for n in range(PER_INSTANCE):
        for name in names:
            await mesh_client.send_durable("picky", name, {"n": n}, msg_id=f"{name}-{n}")
    slow = env(PICKY_FIXED="1", PICKY_DELAY="0.003")  # 1,500 turns take an instance about 5 s
    workers = [await worker_factory(nats_server.url, app=APP, env=slow) for _ in range(2)]

    async def under_way() -> str:
        state = await mesh_client.state("picky", names[0])
        assert state is not None and 100 <= state["ok"] < PER_INSTANCE - 500, state
        owner = await owner_of(mesh_client, f"picky.{names[0]}")
        assert owner is not None
        return owner

    owner = await eventually(under_way, timeout=30, interval=0.01)
    victim = next(w for w in workers if worker_id(w) == owner)
    await victim.kill()  # SIGKILL mid-stream: its unacked messages come back to the other worker
    survivor = next(w for w in workers if w is not victim)

    async def all_applied() -> list[dict[str, Any]]:
        states = [await mesh_client.state("picky", name) for name in names]
        assert all(s is not None and s["ok"] >= PER_INSTANCE for s in states), [s and s["ok"] for s in states]
        return states  # type: ignore[return-value]

    states = await eventually(all_applied, timeout=60)
    for name, state in zip(names, states, strict=True):
        assert state["seen"] == list(range(PER_INSTANCE)), f"{name}: not once each, in the order sent"
        assert state["ok"] == PER_INSTANCE
    await eventually(lambda: drained(mesh_client, "picky", names[0]), timeout=30)
    assert log_events(survivor, "durable.taken_over")  # it waited for the victim's unacked messages


class Seen(BaseModel):
    seen: list[int] = []


FAILURES: dict[int, int] = {}  # payload -> turns still to fail (the state is rolled back, so kept here)


class Flaky(Agent[Seen]):
    type = "flaky"

    async def on_request(self, request: dict[str, int]) -> None:
        n = request["n"]
        if FAILURES.get(n, 0) > 0 and self.name == "stuck":
            FAILURES[n] -= 1
            raise RuntimeError(f"message {n} fails this time")
        self.state.seen.append(n)


async def test_a_retried_message_holds_back_only_its_own_instance(nats_server, mesh_client) -> None:
    nc = await connect(NatsOptions.from_url(nats_server.url))
    runtime = Runtime(nc, [Flaky])
    await runtime.start()
    delivery = DurableDelivery(runtime, DurableOptions(backoff=(2.0,), fetch_wait=0.2))
    await delivery.start()
    FAILURES[5] = 2  # message 5 of "stuck" fails twice, then succeeds after two 2 s backoffs
    try:
        for n in range(40):
            await mesh_client.send_durable("flaky", "stuck", {"n": n})
            await mesh_client.send_durable("flaky", "free", {"n": n})

        async def free_done() -> bool:
            state = await mesh_client.state("flaky", "free")
            assert state is not None and state["seen"] == list(range(40)), state
            return True

        await eventually(free_done, timeout=20)
        stuck = await mesh_client.state("flaky", "stuck")
        assert stuck is not None and stuck["seen"] == [0, 1, 2, 3, 4]  # waiting for 5's retry, nothing after it ran

        async def stuck_done() -> list[int]:
            state = await mesh_client.state("flaky", "stuck")
            assert state is not None and len(state["seen"]) == 40, state
            return list(state["seen"])

        assert await eventually(stuck_done, timeout=20) == list(range(40))
        assert delivery.stats.retried == 2 and delivery.stats.dead == 0
        assert delivery.stats.delivered == 80
    finally:
        FAILURES.clear()
        await delivery.stop(grace=2)
        await runtime.stop(grace=2)
        await nc.close()


async def test_a_second_worker_gets_its_share_of_the_partitions_and_order_holds(nats_server, mesh_client) -> None:
    """The first worker to pull is pinned on every partition; it gives pins away until each holds
    about half, while the messages keep flowing in order."""
    options = DurableOptions(fetch_wait=0.2, ack_wait=2.0, balance_every=0.3)
    started: list[tuple[Any, Runtime, DurableDelivery]] = []

    async def start_worker() -> DurableDelivery:
        nc = await connect(NatsOptions.from_url(nats_server.url))
        runtime = Runtime(nc, [Flaky])
        await runtime.start()
        delivery = DurableDelivery(runtime, options)
        await delivery.start()
        started.append((nc, runtime, delivery))
        return delivery

    def pins(delivery: DurableDelivery) -> int:
        return sum(1 for part in delivery._parts if part.consumer.pin is not None)

    names = [f"i{k}" for k in range(40)]  # spread over the 8 partitions
    sent = 0

    async def send(rounds: int) -> None:
        nonlocal sent
        for _ in range(rounds):
            for name in names:
                await mesh_client.send_durable("flaky", name, {"n": sent})
            sent += 1

    try:
        first = await start_worker()
        await send(2)
        await eventually(lambda: pins(first) == 8, timeout=20)
        second = await start_worker()

        async def shared() -> bool:
            await send(1)
            assert pins(first) <= 4 and pins(second) >= 3, (pins(first), pins(second))
            return True

        await eventually(shared, timeout=40, interval=0.2)
        await send(3)

        async def all_in_order() -> bool:
            for name in names:
                state = await mesh_client.state("flaky", name)
                assert state is not None and state["seen"] == list(range(sent)), (name, state)
            return True

        await eventually(all_in_order, timeout=30)
        assert second.stats.delivered > 0 and first.stats.delivered > 0
    finally:
        for nc, runtime, delivery in reversed(started):
            await delivery.stop(grace=2)
            await runtime.stop(grace=2)
            await nc.close()


async def test_messages_to_an_instance_another_worker_owns_go_there_in_order(nats_server, mesh_client) -> None:
    """The puller does not own the instance: its messages come back from the mailbox unrun ("moved")
    and go to the owner as requests, one at a time, in stored order."""
    started: list[tuple[Any, Runtime]] = []

    async def start_runtime() -> Runtime:
        nc = await connect(NatsOptions.from_url(nats_server.url))
        runtime = Runtime(nc, [Flaky])
        await runtime.start()
        started.append((nc, runtime))
        return runtime

    owner = await start_runtime()
    assert await mesh_client.call("flaky", "elsewhere", {"n": -1}) is None  # claimed by the only worker
    puller = await start_runtime()
    delivery = DurableDelivery(puller, DurableOptions(fetch_wait=0.2))
    await delivery.start()  # the only one pulling
    try:
        for n in range(30):
            await mesh_client.send_durable("flaky", "elsewhere", {"n": n})

        async def all_in_order() -> list[int]:
            state = await mesh_client.state("flaky", "elsewhere")
            assert state is not None and len(state["seen"]) == 31, state
            return list(state["seen"])

        assert await eventually(all_in_order, timeout=20) == [-1, *range(30)]
        assert delivery.stats.delivered == 30
        assert owner.stats["flaky"].turns == 31 and puller.stats["flaky"].turns == 0  # every turn ran on the owner
    finally:
        await delivery.stop(grace=2)
        for nc, runtime in reversed(started):
            await runtime.stop(grace=2)
            await nc.close()
