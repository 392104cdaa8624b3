"""Buckets, streams and consumers that vanished are re-created: a nats-server restarted on an empty store.

A mesh process creates what it needs when it starts (`open_bucket`, `open_objects`, `ensure_stream`,
`add_pull_consumer`), and each of those remembers, per connection, how to make it again. When the
connection is back from an outage, or an owner reports an operation that found a stream gone
(`Healer.check_soon`: a publish to a missing stream gets "no responders"), the connection's `Healer`
asks the server for each one and re-creates, from its remembered configuration, those the server
says it does not have (JetStream's "stream not found", never a timeout: a stream whose leader is
being elected is there). Each re-creation is logged as an error: whatever the old one stored is
gone. Anything that exists is left as it is, an operator's changes included.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors as jse
import structlog

from mesh._nats.connection import Connection, watch_connection

log = structlog.get_logger("mesh.nats")

Recreate = Callable[[], Awaitable[object]]
PATIENCE = 15.0  # seconds to wait for JetStream to answer whether a stream exists (after a restart)
ASK_EVERY = 0.25


class Healer:
    """What one connection's processes created, and the task that checks it is all still there."""

    def __init__(self, nc: Connection) -> None:
        self._nc = nc
        self._streams: dict[str, Recreate] = {}
        self._consumers: dict[tuple[str, str], Recreate] = {}
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.recreated: list[str] = []  # what it re-created, in order (for tests and the curious)

    def remember_stream(self, stream: str, recreate: Recreate) -> None:
        self._streams[stream] = recreate

    def remember_consumer(self, stream: str, durable: str, recreate: Recreate) -> None:
        self._consumers[(stream, durable)] = recreate

    def check_soon(self) -> None:
        """Check (in a task of the healer's, cancelled when the connection closes) that everything
        remembered exists, re-creating what does not; a call during a check asks for another."""
        if not (self._streams or self._consumers) or self._nc.is_closed:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._serve_checks())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _serve_checks(self) -> None:
        while True:
            self._again = False
            try:
                await self.check()
            except Exception as exc:  # NATS went away again: the next reconnect checks again
                log.warning("store.check_failed", error=str(exc) or type(exc).__name__)
            if not self._again:
                return

    async def check(self) -> list[str]:
        """Re-create every remembered stream (then consumer) the server does not have; their names."""
        js = self._nc.jetstream(timeout=2.0)
        found: list[str] = []
        for stream, recreate in list(self._streams.items()):
            if await _exists(functools.partial(js.stream_info, stream)):
                continue
            log.error("store.recreated", stream=stream, lost="the server had no such stream: what it stored is gone")
            await recreate()
            found.append(stream)
        for (stream, durable), recreate in list(self._consumers.items()):
            if await _exists(functools.partial(js.consumer_info, stream, durable)):
                continue
            log.error("store.recreated", stream=stream, consumer=durable, lost="the consumer was gone with its position")
            await recreate()
            found.append(f"{stream}/{durable}")
        self.recreated.extend(found)
        return found


async def _exists(ask: Callable[[], Awaitable[object]]) -> bool:
    """True if JetStream has it, False if JetStream says it has not; asks again while JetStream
    cannot say (not ready after a restart, a leader election), up to `PATIENCE` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while True:
        try:
            await ask()
            return True
        except jse.NotFoundError:
            return False
        except (nats.errors.Error, TimeoutError, jse.Error):
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(ASK_EVERY)


def healer_of(nc: Connection) -> Healer:
    """The connection's healer, made on first use: it checks after every reconnect.

    Kept on the connection object itself (not in a weak mapping, whose values would keep their
    connection alive: a healer refers to its connection)."""
    healer = getattr(nc, _ATTRIBUTE, None)
    if not isinstance(healer, Healer):
        healer = Healer(nc)
        setattr(nc, _ATTRIBUTE, healer)
        watch_connection(nc, reconnected=healer.check_soon, closed=healer.stop)
    return healer


_ATTRIBUTE = "_mesh_healer"
