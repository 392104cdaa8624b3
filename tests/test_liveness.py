"""Liveness with real `mesh worker` processes: a crashed, hung or cut-off owner loses its instances
in time, and a resumed one neither refuses a storm of requests nor runs anything twice.

- crash (SIGKILL): a forward finds nobody on the owner's subject and takes over at once (p99 < 1 s);
- hang (SIGSTOP): forwards waiting on the owner probe its lease and take over once it expired;
- link cut (the owner's connection reset, its reconnects held): taken over at once, the owner
  fenced itself, and it re-checks ownership when it is back;
- resume after the lease lapsed: requests wait for the renewal (asked for at once), then run (still
  the owner) or, sent to its own subject for an instance taken over meanwhile, are refused unrun.

Each test ends with the counters' verdict (`mesh.faults.History`): nothing acknowledged lost,
nothing applied twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from mesh import MeshClient, subjects
from mesh.bus import NatsOptions, connect
from mesh.faults import FaultProxy, History, lease_of, owner_of, paused
from mesh.testing import WorkerProcess, eventually

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent
PYTHONPATH = os.pathsep.join([str(TESTS), str(TESTS.parent)])


def worker_env(lease_ttl: int) -> dict[str, str]:
    return {"PYTHONPATH": PYTHONPATH, "MESH_LEASE_TTL": str(lease_ttl), "MESH_LOG_LEVEL": "info"}


def worker_id(worker: WorkerProcess) -> str:
    for line in worker.log_text().splitlines():
        if '"worker.started"' in line:
            return str(json.loads(line)["worker"])
    raise AssertionError("the worker has not logged worker.started")


async def owners(client: MeshClient, names: list[str]) -> dict[str, str | None]:
    return {name: await owner_of(client.nc, "counter", name) for name in names}


@asynccontextmanager
async def probing(url: str, names: list[str], history: History) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """One caller per instance adding 1 in a loop for the block, through MeshClients (request ids,
    resends; one client per `PER_CLIENT` instances, as callers are many processes, each with its own
    resend budget); yields the function that stops them, then the history holds every call."""
    stop = asyncio.Event()
    clients = [MeshClient(await connect(NatsOptions.from_url(url)), default_timeout=15) for _ in range(0, len(names), PER_CLIENT)]

    async def probe(client: MeshClient, name: str) -> None:
        async def add_one() -> int:
            return int((await client.call("counter", name, {"add": 1}, timeout=15))["value"])

        while not stop.is_set():
            await history.observe(name, add_one(), deadline=30)

    tasks = [asyncio.create_task(probe(clients[i // PER_CLIENT], name)) for i, name in enumerate(names)]

    async def finish() -> None:
        stop.set()
        await asyncio.gather(*tasks)

    try:
        yield finish
    finally:
        await finish()
        for client in clients:
            await client.close()


PER_CLIENT = 4


def answered_after(history: History, names: list[str], moment: float) -> Callable[[], bool]:
    """A probe for `eventually`: every one of `names` has had a successful call end after `moment`."""

    def answered() -> bool:
        late = [n for n in names if not any(c.ok and c.ended > moment for c in history.of(n))]
        assert not late, f"no success yet after the fault for {late}; {history.summary()}"
        return True

    return answered


def first_success_after(history: History, name: str, moment: float) -> float:
    """Seconds from `moment` to the first reply that told the caller a value, for `name`."""
    ends = [c.ended for c in history.of(name) if c.ok and c.ended > moment]
    assert ends, f"{name}: no success after the fault; {history.codes(name)}"
    return min(ends) - moment


async def finals(client: MeshClient, names: list[str]) -> dict[str, int]:
    return {name: (await client.state("counter", name) or {}).get("value", 0) for name in names}


async def test_a_resumed_owner_waits_for_its_lease_and_runs_each_request_once_where_the_instance_lives(
    nats_server, worker_factory
) -> None:
    a, b = [await worker_factory(nats_server.url, "core_agents", worker_env(3)) for _ in range(2)]
    client = MeshClient(await connect(NatsOptions.from_url(nats_server.url)), default_timeout=15)
    raw = await connect(NatsOptions.from_url(nats_server.url))  # plain requests: no retries, no ids
    try:
        kept, moved = await instances_owned_by(client, worker_id(a), 2)
        with paused(a.process.pid):
            # Requests sent to the stopped worker itself wait in its socket.
            waiting = [
                asyncio.create_task(raw_request(raw, worker_id(a), name, 20_000, refused=name == moved))
                for name in (kept, moved)
                for _ in range(5)
            ]
            await eventually(lambda: _lease_gone(client, worker_id(a)), timeout=15)
            # Meanwhile the other worker takes one of its instances over (its lease is gone).
            assert await raw_request(raw, worker_id(b), moved, 5_000) == {"value": 2}
        replies = await asyncio.gather(*waiting)
        assert sorted(r["value"] for r in replies[:5]) == [2, 3, 4, 5, 6], replies  # parked, renewed, run in turn
        # Sent to a worker that no longer owns it: refused, not run (the caller routes them again).
        assert all(r["error"]["code"] == "unavailable" for r in replies[5:]), replies
        assert await client.call("counter", kept, {"add": 0}) == {"value": 6}
        assert await client.call("counter", moved, {"add": 0}) == {"value": 2}
        assert '"lease.regained"' in a.log_text()
        assert await owner_of(client.nc, "counter", moved) == worker_id(b)
    finally:
        await raw.close()
        await client.close()


async def test_a_cut_link_hands_the_instances_over_at_once_and_the_owner_rechecks_when_back(nats_server, worker_factory) -> None:
    async with FaultProxy(nats_server.url) as proxy:
        cut_off = await worker_factory(proxy.url, "core_agents", worker_env(6))
        other = await worker_factory(nats_server.url, "core_agents", worker_env(6))
        client = MeshClient(await connect(NatsOptions.from_url(nats_server.url)), default_timeout=15)
        names = [f"cut{i}" for i in range(16)]
        history = History()
        try:
            async with probing(nats_server.url, names, history) as finish:
                await eventually(lambda: len(history.calls) > 3 * len(names), timeout=30)
                theirs = [n for n, o in (await owners(client, names)).items() if o == worker_id(cut_off)]
                assert theirs
                proxy.stall()  # its reconnects are held too
                cut_at = time.monotonic()
                await proxy.cut()
                await eventually(answered_after(history, names, cut_at + 1.5), timeout=30)
                for name in theirs:  # well before its 6 s lease could expire
                    assert first_success_after(history, name, cut_at) <= 1.5, history.summary()
                proxy.release()
                await cut_off.wait_logged('"lease.regained"')
                settled = time.monotonic()
                await eventually(answered_after(history, names, settled + 1), timeout=30)
                await finish()
            assert '"lease.fenced"' in cut_off.log_text()
            history.assert_counters(await finals(client, names))
        finally:
            await client.close()
            await cut_off.terminate(timeout=5)
            await other.terminate(timeout=5)


async def instances_owned_by(client: MeshClient, worker: str, count: int) -> list[str]:
    """`count` fresh counter instances (value 1) that `worker` owns."""
    found: list[str] = []
    for i in range(200):
        name = f"own{i}"
        assert await client.call("counter", name, {"add": 1}) == {"value": 1}
        if await owner_of(client.nc, "counter", name) == worker:
            found.append(name)
            if len(found) == count:
                return found
    raise AssertionError(f"{worker} claimed fewer than {count} of 200 instances")


async def raw_request(nc, worker: str, name: str, timeout_ms: int, refused: bool = False) -> dict:
    """`{"add": 1}` sent to one worker's own subject, once (as a plain NATS client would); with
    `refused`, the error reply the worker must answer (it does not own the instance)."""
    msg = await nc.request(
        subjects.worker_subject(worker, subjects.instance_key("counter", name)),
        b'{"add": 1}',
        timeout=timeout_ms / 1000,
        headers={subjects.HEADER_TIMEOUT: str(timeout_ms)},
    )
    assert bool((msg.headers or {}).get(subjects.HEADER_MESH_ERROR)) == refused, (msg.headers, msg.data)
    return orjson.loads(msg.data)


async def _lease_gone(client: MeshClient, worker: str) -> bool:
    return await lease_of(client.nc, worker) is None
