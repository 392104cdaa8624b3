"""A request retried with the same request id after each kind of fault gets its original reply and
runs once: after the owner was paused, partitioned or SIGKILLed, after the ack of the write that
applied it was held and then the owner paused, partitioned or SIGKILLed, and after the nats-server
was SIGKILLed and restarted on its store. Hedged copies of one id sent while the owner is paused
run once too.

Two workers, each behind its own `FaultProxy`, with a 3 s lease; every turn that ran is in the
workers' logs, so "runs once" is checked there as well as on the counter.
"""

import asyncio
import os
import signal

import pytest
import pytest_asyncio
from fault_cluster import open_cluster

from mesh.errors import MeshError
from mesh.faults import paused, state_write_marker
from mesh.testing import eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory):
    async with open_cluster(tmp_path_factory.mktemp("ids"), workers=2, proxied=True, env={"MESH_LEASE_TTL": "3"}) as c:
        yield c


async def owner_of(cluster, name: str):
    owner = await cluster.owner(name)
    assert owner is not None and owner.proxy is not None
    return owner


async def assert_ran(cluster, name: str, turns: int) -> None:
    """Exactly `turns` turns of counter/`name` ran, on any worker (a late one is waited for)."""

    def ran() -> bool:
        found = len(cluster.turns_of(name))
        assert found <= turns, f"{found} turns of {name} ran, {turns} expected"
        return found == turns

    await eventually(ran, timeout=15)


async def test_after_the_owner_was_paused_a_retried_id_gets_its_original_reply_and_hedged_copies_run_once(cluster) -> None:
    name = "rid-paused"
    first = await cluster.add(name, request_id=f"{name}-1")
    owner = await owner_of(cluster, name)
    with paused(owner.pid):
        again, *hedged = await asyncio.gather(
            cluster.add(name, request_id=f"{name}-1"),
            *(cluster.add(name, request_id=f"{name}-2") for _ in range(3)),
        )
    assert again == first
    assert hedged == [first + 1] * 3
    assert await cluster.add(name, request_id=f"{name}-1") == first
    assert await cluster.add(name, request_id=f"{name}-2") == first + 1
    assert await cluster.final(name) == first + 1
    await assert_ran(cluster, name, 2)


async def test_after_the_owner_was_partitioned_a_retried_id_gets_its_original_reply_and_runs_once(cluster) -> None:
    name = "rid-partitioned"
    first = await cluster.add(name, request_id=f"{name}-1")
    owner = await owner_of(cluster, name)
    owner.proxy.stall()
    try:
        assert await cluster.add(name, request_id=f"{name}-1") == first
    finally:
        owner.proxy.release()
    assert await cluster.add(name, request_id=f"{name}-1") == first
    assert await cluster.final(name) == first
    await assert_ran(cluster, name, 1)


@pytest.mark.parametrize("fault", ["paused", "partitioned", "killed"])
async def test_after_the_ack_of_its_write_was_held_and_the_owner_faulted_a_retried_id_gets_its_original_reply(
    cluster, fault
) -> None:
    name = f"rid-ack-{fault}"
    assert await cluster.add(name) == 1
    owner = await owner_of(cluster, name)
    held = owner.proxy.hold_after(state_write_marker("counter", name), partition=fault == "partitioned")
    call = asyncio.create_task(cluster.add(name, request_id=f"{name}-1"))
    try:
        async with asyncio.timeout(10):
            await held.wait()
        if fault == "paused":
            with paused(owner.pid):
                async with asyncio.timeout(35):
                    reply = await call  # the client's resends reach the other worker, which takes over
        elif fault == "partitioned":
            async with asyncio.timeout(35):
                reply = await call
        else:
            os.kill(owner.pid, signal.SIGKILL)
            await owner.process.kill()
            async with asyncio.timeout(35):
                reply = await call
    finally:
        owner.proxy.release()
        call.cancel()
    assert reply == 2  # the held write's own reply: it was stored, so it is the one and only
    assert await cluster.add(name, request_id=f"{name}-1") == 2
    assert await cluster.final(name) == 2
    # The first add and the held one, never a third (a killed owner never logged the held one).
    await assert_ran(cluster, name, 1 if fault == "killed" else 2)
    if fault == "killed":
        await cluster.add_worker(proxied=True)  # two workers again for the tests that follow


async def test_after_the_owner_was_killed_a_retried_id_gets_its_original_reply_and_runs_once(cluster) -> None:
    name = "rid-killed"
    first = await cluster.add(name, request_id=f"{name}-1")
    owner = await owner_of(cluster, name)
    os.kill(owner.pid, signal.SIGKILL)
    await owner.process.kill()
    try:
        assert await cluster.add(name, request_id=f"{name}-1") == first
        assert await cluster.final(name) == first
        await assert_ran(cluster, name, 1)
    finally:
        await cluster.add_worker(proxied=True)


async def test_after_the_nats_server_restarted_a_retried_id_gets_its_original_reply_and_runs_once(cluster) -> None:
    name = "rid-server"
    first = await cluster.add(name, request_id=f"{name}-1")
    await cluster.restart_server()

    async def again() -> int:
        return await cluster.add(name, request_id=f"{name}-1", timeout=5)

    assert await eventually(again, timeout=60, interval=0.2, retry=(MeshError,)) == first
    assert await cluster.final(name) == first
    await assert_ran(cluster, name, 1)
