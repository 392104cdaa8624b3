"""Partitions and held acknowledgements, under load: nothing acknowledged is lost, nothing is applied
twice, every reply tells the truth, and the resumed owner runs no stale turn.

Two workers, each behind its own `FaultProxy`, with a 3 s lease (these tests are about the
mechanisms, not the default timings).

- Owner partitioned 12 s: its link stalls both ways with the TCP connections open (the server
  still counts its subscriptions); its instances must answer again before the partition ends.
- Ack held: the owner's state write reaches the server (it is stored) and its ack is held; then
  the owner is paused or partitioned until the other worker has taken the instance over and
  written on top of it. The caller of the held write is a raw NATS request (one attempt, no id):
  whatever it is eventually told (success, `outcome_unknown`, or a timeout) must be true. The
  acks are released with the owner, or some seconds after it resumed (its own timers fire first).
"""

import asyncio
import time

import pytest
import pytest_asyncio
from fault_cluster import CALL_TIMEOUT, Frozen, assert_one_owner_at_a_time, loaded, open_cluster, probing, recovered

from mesh.faults import Direction, FaultProxy, History, paused, state_write_marker
from mesh.testing import eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PARTITION = 12.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory):
    async with open_cluster(tmp_path_factory.mktemp("partition"), workers=2, proxied=True, env={"MESH_LEASE_TTL": "3"}) as c:
        yield c


def print_outcome(label: str, history: History) -> None:
    print(f"\n{label}: {history.summary()}")
    print(f"  client calls {dict(history.codes(via='client'))}, raw calls {dict(history.codes(via='raw'))}")


async def test_owner_partitioned_12s_loses_its_instances_within_the_partition_and_nothing_is_lost_or_applied_twice(
    cluster,
) -> None:
    names = [f"part-{i}" for i in range(12)]
    history = History()
    async with loaded(cluster, names, history):
        await eventually(lambda: len(history.calls) >= 100 and all(history.acknowledged(n) for n in names), timeout=30)
        victim, owned = await cluster.busiest(names)
        async with probing(cluster, owned, history):
            started = time.monotonic()
            victim.proxy.stall()
            try:
                # A hung owner loses its instances: they answer again while it is still cut off.
                await eventually(lambda: recovered(history, owned, started), timeout=PARTITION)
                answered_after = time.monotonic() - started
                await asyncio.sleep(max(0.0, started + PARTITION - time.monotonic()))  # the rest of the fault
            finally:
                victim.proxy.release()
            released = time.monotonic()
            await eventually(lambda: recovered(history, names, released), timeout=30)

    finals = await cluster.finals(names)
    print_outcome(f"partitioned member {victim.index} (owner of {len(owned)}) for {released - started:.1f} s", history)
    print(f"  its instances answered again {answered_after:.2f} s into the partition")
    history.assert_counters(finals)
    assert set(history.codes(via="client")) == {"ok"}, history.codes(via="client")
    assert_one_owner_at_a_time([t for t in cluster.turns() if t["agent_name"] in names])


async def hold_the_ack_of_one_write(cluster, name: str, history: History, *, partition: bool):
    """Make `name`'s owner store a write whose ack it does not get; returns (owner, the raw call's
    task, when the ack was held)."""
    await history.observe(name, cluster.add(name), deadline=CALL_TIMEOUT + 5, via="client")
    owner = await cluster.owner(name)
    assert owner is not None and owner.proxy is not None
    before = await cluster.final(name)
    held = owner.proxy.hold_after(state_write_marker("counter", name), partition=partition)
    raw = asyncio.create_task(history.observe(name, cluster.add_raw(name), deadline=CALL_TIMEOUT + 5, via="raw"))
    async with asyncio.timeout(10):
        await held.wait()
    since = time.monotonic()

    async def stored() -> bool:
        return await cluster.final(name) == before + 1

    await eventually(stored, timeout=5)  # the write is stored; its ack is held in the proxy
    assert not raw.done()
    return owner, raw, since


async def taken_over(history: History, name: str, since: float) -> None:
    """Wait until a MeshClient call of `name` that started after `since` succeeded: the other
    worker has taken the instance over and written on top of the held write."""
    await eventually(lambda: recovered(history, [name], since, via="client"), timeout=20)


@pytest.mark.parametrize("release", ["with_the_owner", "when_it_resends_the_write", "4s_after_it_resumed"])
async def test_ack_held_then_owner_paused_the_held_call_is_told_the_truth_and_nothing_is_applied_twice(cluster, release) -> None:
    name = f"ackp-{release}"
    others = [f"{name}-o{i}" for i in range(6)]
    history = History()
    owner, raw, since = await hold_the_ack_of_one_write(cluster, name, history, partition=False)
    try:
        async with loaded(cluster, others, history, raw=0), probing(cluster, [name], history):
            wall = time.time()
            with paused(owner.pid):
                await taken_over(history, name, since)
                # The resumed owner, its ack still missing, settles the write by sending it again:
                # let it read the answer to that (a conflict, the other worker wrote on top) and
                # read the key back, with the original ack arriving first, too late.
                if release == "when_it_resends_the_write":
                    resent = owner.proxy.hold_after(state_write_marker("counter", name))
            frozen = Frozen(owner.index, wall, time.time())
            if release == "when_it_resends_the_write":
                async with asyncio.timeout(15):
                    await resent.wait()
            elif release == "4s_after_it_resumed":
                await asyncio.sleep(4.0)  # the fault: resumed, its replies still held
            owner.proxy.release()
            released = time.monotonic()
            async with asyncio.timeout(CALL_TIMEOUT + 10):
                held_call = await raw
            await eventually(lambda: recovered(history, [name, *others], released), timeout=30)
    finally:
        owner.proxy.release()
        raw.cancel()  # no-op once it is done

    finals = await cluster.finals([name, *others])
    print_outcome(f"ack held, member {owner.index} paused; held call told {held_call.code or held_call.value}", history)
    history.assert_counters(finals)
    assert set(history.codes(via="client")) == {"ok"}, history.codes(via="client")
    assert_one_owner_at_a_time([t for t in cluster.turns() if t["agent_name"] in (name, *others)], [frozen])


@pytest.mark.parametrize("replies_held_after_resume", [0.0, 4.0])
async def test_ack_held_then_owner_partitioned_the_held_call_is_told_the_truth_and_nothing_is_applied_twice(
    cluster, replies_held_after_resume
) -> None:
    name = f"ackn-{replies_held_after_resume:.0f}"
    others = [f"{name}-o{i}" for i in range(6)]
    history = History()
    owner, raw, since = await hold_the_ack_of_one_write(cluster, name, history, partition=True)
    assert not owner.proxy.flowing(Direction.TO_SERVER)
    try:
        async with loaded(cluster, others, history, raw=0), probing(cluster, [name], history):
            await taken_over(history, name, since)
            owner.proxy.release(Direction.TO_SERVER)
            await asyncio.sleep(replies_held_after_resume)  # the fault: its link half back, replies still held
            owner.proxy.release()
            released = time.monotonic()
            async with asyncio.timeout(CALL_TIMEOUT + 10):
                held_call = await raw
            await eventually(lambda: recovered(history, [name, *others], released), timeout=30)
    finally:
        owner.proxy.release()
        raw.cancel()  # no-op once it is done

    finals = await cluster.finals([name, *others])
    print_outcome(f"ack held, member {owner.index} partitioned; held call told {held_call.code or held_call.value}", history)
    history.assert_counters(finals)
    assert set(history.codes(via="client")) == {"ok"}, history.codes(via="client")
    assert_one_owner_at_a_time([t for t in cluster.turns() if t["agent_name"] in (name, *others)])


async def test_a_worker_whose_link_stalls_while_it_creates_its_durable_consumers_keeps_running(cluster) -> None:
    """A worker announces `worker.started` and serves before its durable delivery has created its
    consumers; a stall then (a pause, a slow or electing JetStream) must not end the process."""
    proxy = FaultProxy(cluster.server.url)
    await proxy.start()
    held = proxy.hold_after(b".CREATE.MESH_DURABLE.")  # its first consumer creation: answers held
    member = cluster.spawn(proxy)
    async with asyncio.timeout(30):
        await held.wait()
    await asyncio.sleep(8.0)  # the fault: longer than a JetStream API call waits (5 s)
    proxy.release()
    await member.process.wait_logged('"durable.started"', timeout=30)  # fails at once if it exited
    assert member.alive()
