"""Real processes for the connection and phone tests: `mesh http` bridges and WebSocket helpers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest_asyncio

from mesh.bus import NatsServer, free_port
from mesh.testing import eventually

TESTS = Path(__file__).parent
ROOT = TESTS.parent
PYTHONPATH = os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])
OFFLINE = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "MESH_MODEL": "", "TWILIO_AUTH_TOKEN": "", "MESH_REALTIME_URL": ""}
WORKER_ENV = {"PYTHONPATH": PYTHONPATH, "MESH_LEASE_TTL": "3", "MESH_IDLE_TIMEOUT": "600", **OFFLINE}
PHONE_ENV = {**WORKER_ENV, "MESH_LEASE_TTL": "6", "MESH_LOG_LEVEL": "debug"}
"""Phone calls: the first call in a process imports the SDK for seconds; keep the default lease."""


class BridgeProcess:
    """A `mesh http` child process on a free port; its output goes to a log file."""

    def __init__(self, url: str, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**os.environ, "NATS_URL": url, "MESH_LOG_FORMAT": "json", "PYTHONPATH": PYTHONPATH, **OFFLINE, **env}
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.cli",
                "http",
                "--http",
                f"127.0.0.1:{self.port}",
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            log.close()

        async with httpx.AsyncClient(timeout=2.0) as client:

            async def healthy() -> bool:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise RuntimeError(f"mesh http exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
                try:
                    return (await client.get(f"{self.url}/healthz")).status_code == 200
                except httpx.TransportError as exc:
                    raise AssertionError(f"not serving yet: {exc}") from exc

            await eventually(healthy, timeout=30, interval=0.1)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def kill(self) -> None:
        """SIGKILL: the bridge dies without closing anything."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await self.process.wait()
        except TimeoutError:
            await self.kill()


BridgeFactory = Callable[..., Awaitable[BridgeProcess]]


@pytest_asyncio.fixture
async def bridge_factory(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[BridgeFactory]:
    """Start `mesh http` processes against the test's nats-server: `await bridge_factory(env={...})`."""
    started: list[BridgeProcess] = []

    async def start(env: dict[str, str] | None = None) -> BridgeProcess:
        bridge = BridgeProcess(nats_server.url, tmp_path / f"bridge-{len(started)}.log", env or {})
        started.append(bridge)
        await bridge.start()
        return bridge

    try:
        yield start
    finally:
        await asyncio.gather(*(b.stop() for b in started))


async def recv_json(ws: Any, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        return orjson.loads(await ws.recv())


async def recv_until(ws: Any, predicate: Callable[[Any], bool], timeout: float = 15.0) -> list[Any]:
    """Every JSON frame received until one satisfies `predicate` (included)."""
    seen: list[Any] = []
    async with asyncio.timeout(timeout):
        while True:
            message = orjson.loads(await ws.recv())
            seen.append(message)
            if predicate(message):
                return seen
