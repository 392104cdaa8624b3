"""Several real `mesh worker` processes serving the same agents: the one-turn-at-a-time guarantees."""

import asyncio
import json
import os
import random
from collections import defaultdict
from pathlib import Path

import pytest

from mesh import MeshClient, MeshError, NatsServer
from mesh.bus import NatsOptions, connect
from mesh.testing import WorkerProcess

TESTS = Path(__file__).parent
PYTHONPATH = os.pathsep.join([str(TESTS), str(TESTS.parent)])
WORKER_ENV = {"MESH_LOG_LEVEL": "debug", "PYTHONPATH": PYTHONPATH, "MESH_LEASE_TTL": "3"}

pytestmark = pytest.mark.slow


def turn_log(workers: list[WorkerProcess]) -> list[dict]:
    """Every `turn.finished` line of every worker, with the worker's index."""
    turns = []
    for index, worker in enumerate(workers):
        for line in worker.log_text().splitlines():
            if '"turn.finished"' in line:
                record = json.loads(line)
                record["worker_index"] = index
                turns.append(record)
    return turns


def assert_no_overlap(turns: list[dict]) -> None:
    by_instance = defaultdict(list)
    for t in turns:
        by_instance[(t["agent_type"], t["agent_name"])].append((t["started_at"], t["ended_at"], t["worker"]))
    for instance, intervals in by_instance.items():
        intervals.sort()
        for (s1, e1, w1), (s2, e2, w2) in zip(intervals, intervals[1:], strict=False):
            assert s2 >= e1, f"turns of {instance} overlap: {(s1, e1, w1)} and {(s2, e2, w2)}"


async def new_client(url: str) -> MeshClient:
    return MeshClient(await connect(NatsOptions.from_url(url)), default_timeout=15.0)


async def test_three_workers_one_hot_instance_then_many_instances(nats_server, worker_factory) -> None:
    workers = [await worker_factory(nats_server.url, "core_agents", WORKER_ENV) for _ in range(3)]
    client = await new_client(nats_server.url)
    try:
        # 1. 1,000 concurrent adds from 50 client tasks to one instance.
        async def caller() -> list[int]:
            return [(await client.call("counter", "hot", {"add": 1}))["value"] for _ in range(20)]

        results = await asyncio.gather(*(caller() for _ in range(50)))
        values = sorted(v for r in results for v in r)
        assert values == list(range(1, 1001))
        assert await client.state("counter", "hot") == {"value": 1000}
        hot_turns = [t for t in turn_log(workers) if t["agent_name"] == "hot" and t["outcome"] == "ok"]
        assert len(hot_turns) == 1000
        assert len({t["worker"] for t in hot_turns}) == 1  # one owner ran them all
        assert_no_overlap(hot_turns)

        # 2. 1,000 distinct instances in parallel, each with its own value, spread over the workers.
        replies = await asyncio.gather(*(client.call("counter", f"n{i}", {"add": i}) for i in range(1000)))
        assert [r["value"] for r in replies] == list(range(1000))
        for i in random.sample(range(1000), 50):
            assert await client.state("counter", f"n{i}") == {"value": i}
        owners = defaultdict(int)
        for t in turn_log(workers):
            if t["agent_name"].startswith("n") and t["outcome"] == "ok":
                owners[t["worker_index"]] += 1
        assert sum(owners.values()) == 1000
        assert set(owners) == {0, 1, 2}, f"work not spread over the workers: {dict(owners)}"
        assert_no_overlap(turn_log(workers))
    finally:
        await client.close()


async def test_state_survives_restarting_every_worker_and_the_server(tmp_path, worker_factory) -> None:
    store = tmp_path / "store"
    server = NatsServer(store)
    await server.start()
    try:
        workers = [await worker_factory(server.url, "core_agents", WORKER_ENV) for _ in range(2)]
        client = await new_client(server.url)
        await asyncio.gather(*(client.call("counter", f"r{i}", {"add": i + 1}) for i in range(200)))
        await asyncio.gather(*(client.call("counter", "r0", {"add": 1}) for _ in range(99)))
        await client.close()
        for worker in workers:
            assert await worker.terminate() == 0
        server.stop()

        server = NatsServer(store, port=server.port)
        await server.start()
        workers = [await worker_factory(server.url, "core_agents", WORKER_ENV) for _ in range(2)]
        client = await new_client(server.url)
        for i in range(1, 200):
            assert await client.state("counter", f"r{i}") == {"value": i + 1}
        assert await client.call("counter", "r0", {"add": 1}) == {"value": 101}
        assert await client.call("counter", "r199", {"add": 0}) == {"value": 200}
        await client.close()
        for worker in workers:
            assert await worker.terminate() == 0
    finally:
        server.stop()


async def test_sigkill_mid_load_loses_no_acknowledged_update(nats_server, worker_factory) -> None:
    workers = [await worker_factory(nats_server.url, "core_agents", WORKER_ENV) for _ in range(3)]
    client = await new_client(nats_server.url)
    instances = [f"k{i}" for i in range(24)]
    acked: dict[str, list[int]] = defaultdict(list)
    sent: dict[str, int] = defaultdict(int)
    errors: list[str] = []
    total = 0
    killed = asyncio.Event()

    async def caller(seed: int) -> None:
        nonlocal total
        rng = random.Random(seed)
        while total < 3000:
            total += 1
            name = rng.choice(instances)
            sent[name] += 1
            try:
                reply = await client.call("counter", name, {"add": 1}, timeout=10)
            except MeshError as exc:
                errors.append(exc.code)
                continue
            acked[name].append(reply["value"])
            if total > 600 and not killed.is_set():
                killed.set()
                await workers[0].kill()

    try:
        await asyncio.gather(*(caller(s) for s in range(50)))
        assert killed.is_set()
        assert any(t["worker_index"] == 0 for t in turn_log(workers))  # the killed worker owned instances
        for name in instances:
            final = (await client.call("counter", name, {"add": 0}))["value"]
            values = acked[name]
            assert len(values) == len(set(values)), f"{name}: two callers saw the same value"
            assert max(values, default=0) <= final <= sent[name], name
            assert len(values) <= final, name
        assert sum(len(v) for v in acked.values()) > 2000  # the survivors took over and kept serving
        assert set(errors) <= {"timeout", "unavailable", "conflict"}, set(errors)
        assert_no_overlap(turn_log(workers))
    finally:
        await client.close()
