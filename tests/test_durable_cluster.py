"""A three-node nats-server cluster: losing one node loses no acknowledged update; the mesh keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from durable_support import APP, TRANSIENT, drained, env, value, value_reaches, wait_log
from nats.js.api import KeyValueConfig, StorageType

from mesh import bus, subjects
from mesh.bus import NatsServer, free_port
from mesh.client import MeshClient
from mesh.errors import MeshError
from mesh.testing import WorkerProcess, eventually

SENDS = 500


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[NatsServer]]:
    """Three JetStream nodes on 127.0.0.1 routed into one cluster (NOTES 3.6)."""
    route_ports = [free_port() for _ in range(3)]
    routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports)
    servers = []
    for i, port in enumerate(route_ports, 1):
        conf = tmp_path / f"n{i}.conf"
        conf.write_text(f"server_name: n{i}\ncluster {{\n  name: mesh\n  listen: 127.0.0.1:{port}\n  routes: [{routes}]\n}}\n")
        servers.append(NatsServer(tmp_path / f"n{i}", config_file=conf))
    try:
        await asyncio.gather(*(s.start() for s in servers))
        yield servers
    finally:
        for server in servers:
            server.stop()


STREAMS = (
    subjects.DURABLE_STREAM,
    *(f"KV_{b}" for b in (subjects.STATE_BUCKET, subjects.DIRECTORY_BUCKET, subjects.WORKERS_BUCKET)),
)


async def replicas_current(js: bus.JetStream) -> bool:
    """True when every replica of every mesh stream is current with its leader; else an
    AssertionError naming the replicas behind (for `eventually`'s failure message)."""
    for stream in STREAMS:
        cluster = (await js.stream_info(stream)).cluster
        behind = [(r.name, r.lag) for r in (cluster.replicas if cluster else None) or [] if not r.current]
        assert not behind, f"{stream}: replicas behind their leader: {behind}"
    return True


async def report(js: bus.JetStream, workers: list[WorkerProcess]) -> str:
    """Where each stream's leader and replicas stand, and the workers' last warnings (connection
    events among them): what a stalled failover needs to be understood."""
    lines = []
    for stream in STREAMS:
        try:
            cluster = (await js.stream_info(stream)).cluster
            replicas = [(r.name, r.current, r.offline, r.lag, r.active) for r in cluster.replicas or []] if cluster else []
            lines.append(f"{stream}: leader {cluster.leader if cluster else None}, replicas {replicas}")
        except Exception as exc:  # a report: every stream's line, whatever one costs
            lines.append(f"{stream}: {type(exc).__name__}: {exc}")
    for w in workers:
        warnings = [
            line for line in w.log_text().splitlines() if any(k in line for k in ('"warning"', '"error"', '"connection.'))
        ]
        lines.append(f"{w.log_path.name}: {len(warnings)} warnings, the last:\n  " + "\n  ".join(warnings[-8:]))
    return "\n".join(lines)


async def test_stopping_one_of_three_nodes_loses_no_acknowledged_update(cluster, worker_factory):
    url = ",".join(s.url for s in cluster)
    client = MeshClient(await bus.connect(bus.NatsOptions.from_url(url)), default_timeout=5.0)
    try:
        js = client.nc.jetstream(timeout=5.0)
        await eventually(js.account_info, timeout=30, retry=TRANSIENT)  # once the nodes have elected a meta leader
        for bucket in (subjects.STATE_BUCKET, subjects.DIRECTORY_BUCKET, subjects.WORKERS_BUCKET):
            await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    history=1,
                    storage=StorageType.FILE,
                    direct=True,
                    replicas=3,
                )
            )
        workers = [await worker_factory(url, app=APP, env=env(MESH_REPLICAS="3")) for _ in range(2)]
        for w in workers:
            await wait_log(w, "durable.started")
        info = await js.stream_info(subjects.DURABLE_STREAM)
        assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2

        stored = calls_ok = calls_tried = ok_after_stop = 0
        stopped = asyncio.Event()
        done = asyncio.Event()

        async def durable_load() -> None:
            nonlocal stored
            for i in range(SENDS):
                await client.send_durable("counter", "ha", {"add": 1}, msg_id=f"ha-{i}")
                stored += 1
                if i % 10 == 9:
                    await asyncio.sleep(0.03)

        async def call_load() -> None:
            nonlocal calls_ok, calls_tried, ok_after_stop
            while not done.is_set():
                calls_tried += 1
                try:
                    await client.call("counter", "calls", {"add": 1}, timeout=5)
                    calls_ok += 1
                    ok_after_stop += stopped.is_set()
                except MeshError:
                    await asyncio.sleep(0.1)

        loads = [asyncio.create_task(durable_load()), asyncio.create_task(call_load())]
        await eventually(lambda: value_reaches(client, "counter", "ha", 100), timeout=30, retry=TRANSIENT)
        # A healthy cluster loses one node: with a replica far behind (a loaded machine), losing
        # the other one would leave no quorum until it caught up, as losing two nodes would.
        await eventually(lambda: replicas_current(js), timeout=30, retry=TRANSIENT)
        leader = (await js.stream_info(subjects.DURABLE_STREAM)).cluster.leader
        victim = cluster[int(leader.removeprefix("n")) - 1]  # the fixture names node i "n{i}"
        victim.kill()  # the stream leader crashes mid-load
        stopped.set()
        await loads[0]
        assert stored == SENDS
        try:
            await eventually(lambda: value_reaches(client, "counter", "ha", SENDS), timeout=60, retry=TRANSIENT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nkilled {leader}\n{await report(js, workers)}") from None
        await eventually(lambda: ok_after_stop >= 5, timeout=30)
        done.set()
        await loads[1]
        await eventually(lambda: drained(client, "counter", "ha"), timeout=30, retry=TRANSIENT)
        assert await value(client, "counter", "ha") == SENDS
        total = await value(client, "counter", "calls")
        assert calls_ok <= total <= calls_tried
    finally:
        await client.close()
