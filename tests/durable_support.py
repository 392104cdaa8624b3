"""Helpers shared by the durable tests: worker environment, log parsing, polling, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from mesh import bus, subjects
from mesh.client import MeshClient
from mesh.delivery import consumer_name
from mesh.testing import WorkerProcess

TESTS = Path(__file__).parent
ROOT = TESTS.parent
APP = "durable_app"
T = TypeVar("T")

# Short leases and retry timings so failover fits in a test; the defaults suit production.
FAST = {
    "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    "MESH_LEASE_TTL": "3",
    "MESH_DURABLE_ACK_WAIT": "2",
    "MESH_DURABLE_TURN_TIMEOUT": "4",
    "MESH_DURABLE_BACKOFF": "0.1,0.2,0.5,1",
    "MESH_SHUTDOWN_GRACE": "5",
}


def env(**extra: str) -> dict[str, str]:
    return {**FAST, **extra}


def worker_id(worker: WorkerProcess) -> str:
    for line in worker.log_text().splitlines():
        if '"worker.started"' in line:
            return str(json.loads(line)["worker"])
    raise AssertionError("worker has not logged worker.started")


def wait_log(worker: WorkerProcess, event: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while f'"{event}"' not in worker.log_text():
        assert worker.process.poll() is None, worker.log_text()[-3000:]
        assert time.monotonic() < deadline, f"no {event} in:\n{worker.log_text()[-3000:]}"
        time.sleep(0.05)


def log_events(worker: WorkerProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in worker.log_text().splitlines():
        if f'"{event}"' in line:
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return found


async def eventually(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float = 30.0) -> T:
    """Poll `probe` until `accept` holds; fail with the last value seen.

    A probe that raises (a read during a leader election times out) counts as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value: Any = await probe()
        except Exception as exc:
            value = exc
        else:
            if accept(value):
                return value
        assert time.monotonic() < deadline, f"condition not reached; last value {value!r}"
        await asyncio.sleep(0.1)


def mesh_cli(url: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **FAST, "NATS_URL": url},
    )


async def owner_of(client: MeshClient, key: str) -> str | None:
    js = client.nc.jetstream()
    directory = bus.Bucket(await bus.open_bucket(js, subjects.DIRECTORY_BUCKET), js, subjects.DIRECTORY_BUCKET)
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
