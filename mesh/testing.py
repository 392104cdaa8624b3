"""Pytest fixtures that run the real thing: a nats-server on a free port, runtimes, worker processes.

Enable them in a `conftest.py` with `pytest_plugins = ["mesh.testing"]`, then:

    async def test_counter(mesh_factory, mesh_client):
        await mesh_factory([Counter])
        assert await mesh_client.call("counter", "a", {"add": 1}) == {"value": 1}

A test that waits for something asynchronous waits with `await eventually(probe)`, never with a
bare loop or a sleep; `await worker_factory(url)` starts a `mesh worker` process.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import orjson
import pytest_asyncio

from mesh._nats import NatsOptions, NatsServer, connect, next_message, publish, subscribe, unsubscribe
from mesh.agent import Agent
from mesh.client import MeshClient
from mesh.runtime import Runtime, RuntimeOptions

RuntimeFactory = Callable[..., Awaitable[Runtime]]
T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,  # noqa: ASYNC109 - the failure names the probe's last answer, which asyncio.timeout() cannot
    interval: float = ...,
    retry: tuple[type[Exception], ...] = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    retry: tuple[type[Exception], ...] = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
    interval: float = 0.05,
    retry: tuple[type[Exception], ...] = (),
) -> Any:
    """Call `probe` (sync or async) until it returns something truthy, and return that.

    The one way tests wait for a condition: a probe that returns a falsy value or raises
    AssertionError (or one of `retry`, errors that mean "not yet", such as a read during a leader
    election) is called again after `interval`. Past `timeout` it fails with AssertionError naming
    the last failure, so a test that times out says what it was still waiting for. A probe that
    hangs is cut off at the deadline too.
    """
    not_yet: tuple[type[Exception], ...] = (AssertionError, *retry)
    last = "no answer yet"
    cause: BaseException | None = None
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            while True:
                try:
                    value = probe()
                    if inspect.isawaitable(value):
                        last = f"the probe was still running (before that: {last})"
                        value = await value
                except not_yet as exc:
                    last, cause = f"{type(exc).__name__}: {exc}", exc
                else:
                    if value:
                        return value
                    last, cause = f"the probe returned {value!r}", None
                await asyncio.sleep(interval)
    except TimeoutError:
        if not scope.expired():
            raise
    raise AssertionError(f"not true within {timeout} s; last: {last}") from cause


@pytest_asyncio.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A fresh JetStream nats-server on 127.0.0.1 with its store under `tmp_path`."""
    server = NatsServer(tmp_path / "nats-store")
    await server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def mesh_client(nats_server: NatsServer) -> AsyncIterator[MeshClient]:
    client = MeshClient(await connect(NatsOptions.from_url(nats_server.url)), default_timeout=10.0)
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def mesh_factory(nats_server: NatsServer) -> AsyncIterator[RuntimeFactory]:
    """Start in-process runtimes, each on its own connection: `await mesh_factory([Counter])`."""
    started: list[Runtime] = []

    async def start(agents: Sequence[type[Agent[Any]]], options: RuntimeOptions | None = None) -> Runtime:
        nc = await connect(NatsOptions.from_url(nats_server.url, name="mesh-test-worker"))
        runtime = Runtime(nc, agents, options=options)
        await runtime.start()
        started.append(runtime)
        await wait_serving(nats_server.url, [a.type for a in agents], runtime.worker_id)
        return runtime

    try:
        yield start
    finally:
        for runtime in reversed(started):
            await runtime.stop(grace=2.0)
            await runtime.nc.close()


async def wait_serving(url: str, agent_types: Sequence[str], worker_id: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - see eventually
    """Return once another connection sees `worker_id` answer `$SRV.PING.<type>` for every type,
    so a test's first request never races the worker's subscriptions."""
    probe = await connect(NatsOptions.from_url(url, name="mesh-test-probe"))

    async def answers(agent_type: str) -> bool:
        inbox = probe.new_inbox()
        sub = await subscribe(probe, inbox)
        try:
            await publish(probe, f"$SRV.PING.{agent_type}", b"", reply=inbox)
            while (msg := await next_message(sub, 0.2)) is not None:
                if not msg.data:  # the server's "no responders" status: no service subscribed yet
                    continue
                if orjson.loads(msg.data).get("metadata", {}).get("mesh.worker") == worker_id:
                    return True
        finally:
            await unsubscribe(sub)
        raise AssertionError(f"worker {worker_id} does not answer $SRV.PING.{agent_type}")

    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for agent_type in agent_types:
            await eventually(functools.partial(answers, agent_type), timeout=max(deadline - loop.time(), 0.0), interval=0)
    finally:
        await probe.close()


class WorkerProcess:
    """A `mesh worker` child process whose stderr (JSON logs) goes to a file.

    Its waits are async (an async test must not block its loop while a worker starts or stops).
    """

    def __init__(self, url: str, app: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        full_env = {**os.environ, "NATS_URL": url, "MESH_LOG_FORMAT": "json", **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--app", app],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_logged(self, text: str, timeout: float = 20.0) -> None:  # noqa: ASYNC109 - see eventually
        """Return once `text` is in the log; fail at once if the worker exits first."""

        def logged() -> bool:
            if text in self.log_text():
                return True
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            raise AssertionError(f"no {text!r} in the log:\n{self.log_text()[-3000:]}")

        await eventually(logged, timeout=timeout)

    async def wait_started(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109 - see eventually
        await self.wait_logged("worker.started", timeout)

    async def wait(self, timeout: float) -> int | None:  # noqa: ASYNC109 - see eventually
        """The exit code, or None if the worker is still running after `timeout`."""
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            return None

    async def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)

    async def terminate(self, timeout: float = 15.0) -> int:  # noqa: ASYNC109 - see eventually
        """SIGTERM, then SIGKILL if the worker is still running after `timeout`; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if await self.wait(timeout) is None:
                await self.kill()
        self._log.close()
        return self.process.returncode


WorkerFactory = Callable[..., Awaitable[WorkerProcess]]


@pytest_asyncio.fixture
async def worker_factory(tmp_path: Path) -> AsyncIterator[WorkerFactory]:
    """Start `mesh worker` processes: `await worker_factory(url, app="services.demo", env={...})`."""
    workers: list[WorkerProcess] = []

    async def start(url: str, app: str = "services.demo", env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(url, app, tmp_path / f"worker-{len(workers)}.log", env)
        workers.append(worker)
        await worker.wait_started()
        return worker

    try:
        yield start
    finally:
        for worker in workers:
            await worker.terminate(timeout=5.0)
