"""Helpers shared by the durable tests: worker environment, log parsing, polling, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import nats.errors
from mesh_up import run_mesh

from mesh import bus, subjects
from mesh.client import MeshClient
from mesh.delivery import consumer_name
from mesh.errors import MeshError
from mesh.testing import WorkerProcess

TESTS = Path(__file__).parent
ROOT = TESTS.parent
APP = "durable_app"

# Short leases and retry timings so failover fits in a test; the defaults suit production.
FAST = {
    "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    "MESH_LEASE_TTL": "3",
    "MESH_DURABLE_ACK_WAIT": "2",
    "MESH_DURABLE_TURN_TIMEOUT": "4",
    "MESH_DURABLE_BACKOFF": "0.1,0.2,0.5,1",
    "MESH_SHUTDOWN_GRACE": "5",
}


# What a read may raise while a cluster elects a new leader: "not yet" for `eventually`.
TRANSIENT: tuple[type[Exception], ...] = (MeshError, TimeoutError, nats.errors.Error)


def env(**extra: str) -> dict[str, str]:
    return {**FAST, **extra}


def worker_id(worker: WorkerProcess) -> str:
    for line in worker.log_text().splitlines():
        if '"worker.started"' in line:
            return str(json.loads(line)["worker"])
    raise AssertionError("worker has not logged worker.started")


async def wait_log(worker: WorkerProcess, event: str, timeout: float = 20.0) -> None:
    await worker.wait_logged(f'"{event}"', timeout)


def log_events(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in worker.log_text().splitlines():
        if f'"{event}"' in line:
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return found


async def mesh_cli(url: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the `mesh` command line against `url` without blocking the test's event loop."""
    return await run_mesh(*args, env={**os.environ, **FAST, "NATS_URL": url}, timeout=timeout)


async def owner_of(client: MeshClient, key: str) -> str | None:
    directory = await bus.open_bucket(client.nc, subjects.DIRECTORY_BUCKET)
    found = await directory.get(key)
    return None if found is None else found[0].decode()


async def value(client: MeshClient, agent_type: str, name: str, field: str = "value") -> int:
    state = await client.state(agent_type, name)
    return 0 if state is None else int(state[field])


async def backlog(client: MeshClient, agent_type: str, name: str) -> int:
    """Durable messages to this agent type not yet acknowledged (stored or in flight)."""
    js = client.nc.jetstream()
    total = 0
    for p in range(subjects.DURABLE_PARTITIONS):
        info = await js.consumer_info(subjects.DURABLE_STREAM, consumer_name(agent_type, p))
        total += (info.num_pending or 0) + (info.num_ack_pending or 0)
    return total


async def value_reaches(client: MeshClient, agent_type: str, name: str, at_least: int) -> int:
    """A probe for `eventually`: the instance's value once it is at least `at_least`."""
    current = await value(client, agent_type, name)
    assert current >= at_least, f"{agent_type}/{name} is at {current}, waiting for {at_least}"
    return current


async def drained(client: MeshClient, agent_type: str, name: str) -> bool:
    """A probe for `eventually`: true once no durable message to `agent_type` is unacknowledged."""
    left = await backlog(client, agent_type, name)
    assert left == 0, f"{left} durable messages to {agent_type} not yet acknowledged"
    return True
