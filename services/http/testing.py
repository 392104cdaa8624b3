"""Pytest fixtures for the HTTP bridge: a real uvicorn on 127.0.0.1 (free port) against `nats_server`.

Enable with `pytest_plugins = ["mesh.testing", "services.http.testing"]`, then:

    async def test_post(mesh_factory, http_factory):
        await mesh_factory([Counter])
        bridge = await http_factory()
        async with httpx.AsyncClient(base_url=bridge.url) as http:
            assert (await http.post("/agents/counter/a", json={"add": 1})).json() == {"value": 1}
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest_asyncio

from mesh import bus
from mesh.bus import NatsServer, free_port
from services.http.bridge import Bridge
from services.http.config import BridgeConfig
from services.http.server import build_server


@dataclass
class RunningBridge:
    url: str
    ws_url: str
    config: BridgeConfig
    server: Any
    task: asyncio.Task[None]

    @property
    def bridge(self) -> Bridge:
        bridge: Bridge = self.server.config.app.state.bridge
        return bridge


HttpFactory = Callable[..., Awaitable[RunningBridge]]


@pytest_asyncio.fixture
async def http_factory(nats_server: NatsServer) -> AsyncIterator[HttpFactory]:
    """Start HTTP bridges: `await http_factory(tokens=("secret",), timeout=2.0)` (any BridgeConfig field)."""
    started: list[RunningBridge] = []

    async def start(**overrides: Any) -> RunningBridge:
        config = dataclasses.replace(BridgeConfig(port=free_port(), heartbeat=1.0, discovery_wait=0.2), **overrides)
        server = build_server(config, bus.NatsOptions.from_url(nats_server.url, name="mesh-http-test"))
        task = asyncio.get_running_loop().create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        running = RunningBridge(f"http://{config.host}:{config.port}", f"ws://{config.host}:{config.port}", config, server, task)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in reversed(started):
            running.server.should_exit = True
        await asyncio.gather(*(r.task for r in started), return_exceptions=True)
