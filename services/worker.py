"""The life of one worker process, as one async context manager: `mesh up` and `mesh worker` use it.

    async with open_worker(settings, url, agents) as worker:
        ...  # serve until told to stop (other services may share worker.nc)

Inside the block the worker serves: one NATS connection, the flight recorder, the runtime hosting
`agents` (and, among its background tasks, the reaper that closes dead bridges' connections on
their instances), durable delivery pulling for them, and the operations port (`/metrics`, `/healthz`,
`/readyz`) when `settings.metrics_port` is set. Leaving the block stops them in the order that
loses nothing: delivery stops pulling (deliveries in flight finish and are acked), the runtime
stops taking turns and hands its instances over, both within `settings.shutdown_grace`; then the
recorder sends what it holds and the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from mesh import bus
from mesh.agent import Agent
from mesh.delivery import DurableDelivery
from mesh.metrics import MetricsObserver, RuntimeCollector
from mesh.observe import Observer
from mesh.reaper import Reaper
from mesh.recorder import EventsLimits, FlightRecorder
from mesh.runtime import Runtime, RuntimeOptions
from services.health import open_health_server
from services.settings import MeshSettings

if TYPE_CHECKING:
    from mesh.bus import Connection

log = structlog.get_logger("mesh.worker")

CLOSE_TIMEOUT = 2.0
"""Longest wait for the server to confirm what a closing connection sent (a vanished server)."""


@dataclass(frozen=True)
class Worker:
    """What a running worker offers the process around it."""

    nc: Connection
    runtime: Runtime
    delivery: DurableDelivery


@contextlib.asynccontextmanager
async def open_worker(
    settings: MeshSettings,
    url: str,
    agents: Sequence[type[Agent[Any]]],
    *,
    options: RuntimeOptions | None = None,
) -> AsyncIterator[Worker]:
    """Serve `agents` on the NATS server(s) at `url` for the duration of the block.

    `options` replaces `settings.runtime_options()` (`mesh up` sets `handover_linger=0` when the
    nats-server is its own and stops with it).
    """
    nc = await bus.connect(settings.nats_options(url, "mesh-worker"))
    try:
        async with open_observers(settings, nc) as observers:
            runtime = Runtime(nc, agents, options=options or settings.runtime_options(), observers=observers)
            collector = RuntimeCollector(runtime)
            async with open_health_server(settings.metrics_host, settings.metrics_port, ready=runtime.ready, collector=collector):
                await runtime.start()
                # Closes, on their instances, the connections of bridges that died (mesh.reaper).
                runtime.background.spawn(Reaper(nc, replicas=settings.replicas).serve())
                delivery = DurableDelivery(runtime, settings.durable_options())
                deadline: float | None = None
                try:
                    await delivery.start()
                    try:
                        yield Worker(nc, runtime, delivery)
                    finally:
                        deadline = asyncio.get_running_loop().time() + settings.shutdown_grace
                        await delivery.stop(grace=settings.shutdown_grace)
                finally:
                    left = settings.shutdown_grace if deadline is None else deadline - asyncio.get_running_loop().time()
                    await runtime.stop(grace=max(0.5, left))
    finally:
        await close_connection(nc)


@contextlib.asynccontextmanager
async def open_observers(settings: MeshSettings, nc: Connection) -> AsyncIterator[list[Observer]]:
    """The runtime's observers: metrics always, the flight recorder and OpenTelemetry if enabled."""
    observers: list[Observer] = [MetricsObserver()]
    async with contextlib.AsyncExitStack() as stack:
        if settings.recorder:
            limits = EventsLimits(settings.events_max_age, settings.events_max_msgs, settings.events_max_bytes, settings.replicas)
            recorder = FlightRecorder(nc, limits=limits)
            await recorder.start()
            stack.push_async_callback(recorder.stop)
            observers.append(recorder)
        if settings.otel:
            from mesh import otel

            exporter = otel.from_environment()
            if exporter is not None:
                stack.callback(exporter.shutdown)
                observers.append(exporter)
        yield observers


async def close_connection(nc: Connection) -> None:
    """Close `nc` once the server has confirmed everything sent on it (bounded: a vanished server
    must not hold the exit). The worker has stopped every subscription by now, so there is nothing
    to drain, only to flush."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await nc.flush()
    except Exception as exc:  # the server is gone or slow: what was unconfirmed cannot be helped now
        log.warning("worker.flush_failed", error=str(exc) or type(exc).__name__)
    await nc.close()
