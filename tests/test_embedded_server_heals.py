"""`mesh up` heals by itself: its nats-server is restarted when it dies, and what a lost store held
(buckets, streams, consumers) is created again by the worker and the bridge.

Real processes: `mesh up` on free ports (tests/mesh_up.py), its nats-server SIGKILLed underneath it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest
from mesh_up import MeshUp, open_mesh_up

from mesh import MeshClient, MeshError
from mesh.bus import NatsOptions, connect
from mesh.testing import eventually

pytestmark = pytest.mark.slow


def nats_server_pid(up: MeshUp) -> int:
    """The pid of the nats-server `mesh up` started (its child running the nats-server binary)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if name == "nats-server" and fields[0] != "Z" and int(fields[1]) == up.process.pid:
            return int(entry.name)
    raise AssertionError(f"no live nats-server child of mesh up ({up.process.pid})")


async def kill_nats_server(up: MeshUp) -> None:
    """SIGKILL `mesh up`'s nats-server and wait until `mesh up` says it has restarted it."""
    restarts = up.output().count(RESTARTED)
    os.kill(nats_server_pid(up), signal.SIGKILL)

    def restarted() -> bool:
        assert up.output().count(RESTARTED) > restarts, up.output()[-2000:]
        return True

    await eventually(restarted, timeout=60)


async def call_when_back(client: MeshClient, name: str, payload: dict) -> dict:
    """The reply once the mesh serves again (the server restarting, the worker reconnecting)."""
    return await eventually(
        lambda: client.call("counter", name, payload, timeout=3), timeout=60, interval=0.2, retry=(MeshError,)
    )


RESTARTED = '"nats_server.restarted"'


async def test_mesh_up_restarts_its_nats_server_with_the_state_intact(tmp_path) -> None:
    async with open_mesh_up(tmp_path / "store", env={"MESH_LEASE_TTL": "3"}) as up:
        client = MeshClient(await connect(NatsOptions.from_url(up.nats_url)), default_timeout=10)
        try:
            assert await client.call("counter", "kept", {"add": 5}) == {"value": 5}
            first = nats_server_pid(up)
            await kill_nats_server(up)
            assert '"nats_server.exited"' in up.output()
            assert nats_server_pid(up) != first
            assert await call_when_back(client, "kept", {"add": 1}) == {"value": 6}
            async with httpx.AsyncClient(base_url=up.http_url, timeout=10) as http:

                async def http_serves() -> bool:
                    response = await http.post("/agents/counter/kept", json={"add": 1})
                    assert response.status_code == 200, response.text
                    return response.json() == {"value": 7}

                assert await eventually(http_serves, timeout=30, interval=0.2)
            # Twice more, in a row: each death is seen and the server comes back each time.
            for _ in range(2):
                await kill_nats_server(up)
            assert up.output().count(RESTARTED) == 3
            assert (await call_when_back(client, "kept", {"add": 0}))["value"] == 7
        finally:
            await client.nc.close()
        await up.stop(signal.SIGTERM, whole_group=False)
    assert up.process.returncode == 0, up.output()[-3000:]


async def test_a_lost_store_is_created_again_and_the_mesh_serves_from_scratch(tmp_path) -> None:
    store = tmp_path / "store"
    async with open_mesh_up(store, env={"MESH_LEASE_TTL": "3"}) as up:
        client = MeshClient(await connect(NatsOptions.from_url(up.nats_url)), default_timeout=10)
        try:
            assert await client.call("counter", "lost", {"add": 5}) == {"value": 5}
            # The store goes (a wiped disk) and the server dies; the supervisor starts it empty.
            os.kill(nats_server_pid(up), signal.SIGKILL)
            await asyncio.to_thread(shutil.rmtree, store / "jetstream", ignore_errors=True)  # before the restart (0.5 s)
            await up.wait_printed(RESTARTED)
            await up.wait_printed('"store.recreated"')
            assert await call_when_back(client, "lost", {"add": 1}) == {"value": 1}  # its state went with the store
            assert await call_when_back(client, "new", {"add": 2}) == {"value": 2}
            recreated = up.output()
            for stream in ("KV_mesh_state", "KV_mesh_dir", "KV_mesh_workers", "MESH_DURABLE"):
                assert f'"stream": "{stream}"' in recreated, stream

            async def durable_send_delivered() -> bool:
                await client.send_durable("counter", "durable", {"add": 3})
                return (await client.state("counter", "durable") or {}).get("value", 0) >= 3

            assert await eventually(durable_send_delivered, timeout=30, interval=1.0, retry=(MeshError,))
            async with httpx.AsyncClient(base_url=up.http_url, timeout=10) as http:

                async def http_serves() -> bool:
                    response = await http.post("/agents/counter/lost", json={"add": 1}, headers={"Idempotency-Key": "k1"})
                    assert response.status_code == 200, response.text
                    return response.json() == {"value": 2}

                assert await eventually(http_serves, timeout=30, interval=0.2)
        finally:
            await client.nc.close()
        await up.stop(signal.SIGTERM, whole_group=False)
    assert up.process.returncode == 0, up.output()[-3000:]
