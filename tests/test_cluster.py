"""Scale-out proof: a three-node JetStream cluster on 127.0.0.1 with several `mesh worker` processes."""

import asyncio
import random
from collections import Counter as Tally
from collections import defaultdict
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from test_workers import PYTHONPATH, assert_no_overlap, turn_log

from mesh import MeshClient, MeshError, NatsServer, subjects
from mesh.bus import NatsOptions, connect, free_port
from mesh.testing import WorkerProcess, eventually

WORKER_ENV = {"MESH_LOG_LEVEL": "debug", "PYTHONPATH": PYTHONPATH, "MESH_LEASE_TTL": "3", "MESH_REPLICAS": "3"}

pytestmark = pytest.mark.slow


def node_config(index: int, route_ports: list[int]) -> str:
    routes = "\n".join(f"    nats-route://127.0.0.1:{port}" for port in route_ports)
    return (
        f"server_name: n{index}\n"
        "jetstream { max_memory_store: 64MB, max_file_store: 1GB }\n"
        f"cluster {{\n  name: mesh-test\n  listen: 127.0.0.1:{route_ports[index]}\n  routes: [\n{routes}\n  ]\n}}\n"
    )


async def start_cluster(folder: Path) -> list[NatsServer]:
    route_ports = [free_port() for _ in range(3)]
    servers = []
    for index in range(3):
        conf = folder / f"n{index}.conf"
        conf.write_text(node_config(index, route_ports))
        server = NatsServer(folder / f"store-n{index}", config_file=conf)
        servers.append(server)
    await asyncio.gather(*(server.start() for server in servers))
    nc = await connect(NatsOptions.from_url(",".join(s.url for s in servers)))
    try:  # JetStream answers once the nodes have elected a meta leader
        await eventually(nc.jetstream().account_info, timeout=20, interval=0.1, retry=(TimeoutError, nats.errors.Error))
    finally:
        await nc.close()
    return servers


async def test_workers_spread_join_and_leave_on_a_three_node_cluster(tmp_path, worker_factory) -> None:
    servers = await start_cluster(tmp_path)
    urls = [server.url for server in servers]
    workers = []
    try:
        # Each worker connects first to a different node (its URL list starts there).
        async def start_worker(index: int) -> WorkerProcess:
            ordered = urls[index % 3 :] + urls[: index % 3]
            return await worker_factory(",".join(ordered), "core_agents", WORKER_ENV)

        workers.extend([await start_worker(i) for i in range(3)])
        client = MeshClient(await connect(NatsOptions.from_url(",".join(urls))), default_timeout=15)
        acked: dict[str, int] = defaultdict(int)
        retried: Tally[str] = Tally()
        failures: list[str] = []
        names = [f"k{i}" for i in range(60)]
        done = 0

        async def add_one(name: str) -> None:
            for _ in range(50):
                try:
                    await client.call("counter", name, {"add": 1})
                except MeshError as exc:
                    if exc.code == "unavailable":  # an in-flight request met a worker leaving: retry
                        retried[exc.code] += 1
                        await asyncio.sleep(0.05)
                        continue
                    failures.append(f"{name}: {exc.code}: {exc.message}")
                    return
                acked[name] += 1
                return
            failures.append(f"{name}: gave up after retries")

        left = asyncio.Event()

        async def caller(seed: int, until: int, keep_going: asyncio.Event | None = None) -> None:
            nonlocal done
            rng = random.Random(seed)
            while done < until or (keep_going is not None and not keep_going.is_set()):
                done += 1
                await add_one(rng.choice(names))

        # Phase 1: three workers share 60 instances.
        await asyncio.gather(*(caller(s, 600) for s in range(20)))
        # Phase 2: a fourth worker joins under load; new instances reach it too.
        load = asyncio.gather(*(caller(s, 1400, left) for s in range(20, 40)))
        workers.append(await start_worker(3))
        names.extend(f"j{i}" for i in range(60))
        await eventually(lambda: done >= 1000, timeout=120)
        # Phase 3: the first worker leaves (SIGTERM) while callers keep going.
        assert await workers[0].terminate() == 0
        left.set()
        await load
        await asyncio.gather(*(caller(s, done + 400) for s in range(40, 60)))
        total = done

        assert failures == []
        for name in names:
            assert await client.call("counter", name, {"add": 0}) == {"value": acked[name]}, name
        assert sum(acked.values()) == total

        turns = [t for t in turn_log(workers) if t["agent_type"] == "counter" and t["outcome"] == "ok"]
        by_worker = Tally(t["worker_index"] for t in turns)
        assert set(by_worker) == {0, 1, 2, 3}, by_worker  # spread over every worker, the new one included
        assert {t["worker_index"] for t in turns if t["agent_name"].startswith("k")} >= {0, 1, 2}
        assert_no_overlap(turns)
        assert '"worker.stopped"' in workers[0].log_text()

        js = client.nc.jetstream()
        for bucket in (subjects.STATE_BUCKET, subjects.DIRECTORY_BUCKET, subjects.WORKERS_BUCKET):
            info = await js.stream_info(f"KV_{bucket}")
            assert info.config.num_replicas == 3 and len(info.cluster.replicas) == 2, bucket
        events = await js.stream_info(subjects.EVENTS_STREAM)
        assert events.config.num_replicas == 3 and events.state.messages > 0
        await client.close()
    finally:
        for worker in workers:  # before the servers, so they stop gracefully
            await worker.terminate()
        for server in servers:
            server.stop()


async def test_readers_never_create_a_bucket_so_the_first_worker_sets_its_replicas(nats_server, mesh_client) -> None:
    assert await mesh_client.state("counter", "a") is None
    with pytest.raises(nats.js.errors.NotFoundError):
        await mesh_client.nc.jetstream().stream_info(f"KV_{subjects.STATE_BUCKET}")
