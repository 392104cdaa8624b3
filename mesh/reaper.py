"""Bridges' leases, and the reaper that closes the connections of a bridge that died.

A bridge process holding connections keeps a lease in `mesh_conns` (`lease.<bridge>`, written with
a per-message TTL and renewed every `heartbeat` seconds, like a worker's in `mesh_workers`) and a
marker that outlives it (`known.<bridge>`). Like a worker, it fences itself: once its last
acknowledged renewal is older than TTL - max(1 s, TTL/4) it must stop serving its connections
(the bridge closes them), since the reaper may already be closing them for it.

Every worker runs a `Reaper`: every `period` seconds it lists the known bridges, and for each one
whose lease is gone it sends a `close` event (code 1006) for each of its connections
(`bridge.<bridge>.<conn>`) to the instance holding it, so that instance runs `on_close` within the
lease time plus one period. Several workers may reap the same bridge at once: a `close` for a
connection already closed is a no-op, so `on_close` runs once. A marker with no connections left
is removed after `forget_after` seconds (a connect still in flight when the bridge died could
store a record a moment later).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import orjson
import structlog

from mesh import subjects
from mesh._nats import Bucket, open_bucket
from mesh._nats import Connection as NatsConnection
from mesh.client import MeshClient
from mesh.connections import CLOSE, event_headers, known_key, lease_key
from mesh.errors import MeshError

log = structlog.get_logger("mesh.reaper")

GONE_CODE = 1006
"""The close code `on_close` sees for a connection whose bridge died (abnormal closure)."""
CONCURRENCY = 64
"""Close events in flight at once while reaping one bridge (it may have held thousands)."""


def new_bridge_id() -> str:
    return "b" + os.urandom(6).hex()


class BridgeLease:
    """A bridge's lease on its connections: `await start()`, then `serve()` renews it until cancelled."""

    def __init__(self, bucket: Bucket, bridge_id: str, *, ttl: int = 6, heartbeat: float = 1.0) -> None:
        if ttl < 2:
            raise ValueError("the lease TTL must be at least 2 seconds (the server's TTL is whole seconds)")
        self.bucket = bucket
        self.bridge_id = bridge_id
        self.ttl = ttl
        self._safety = max(1.0, ttl / 4)
        self.heartbeat = min(heartbeat, (ttl - self._safety) / 3)
        self._until = 0.0
        self._info = orjson.dumps({"bridge": bridge_id, "host": socket.gethostname(), "pid": os.getpid()})

    def fenced(self) -> bool:
        """True once the reaper may consider this bridge dead: its connections must be closed."""
        return time.monotonic() > self._until

    async def start(self) -> None:
        await self.bucket.put(known_key(self.bridge_id), self._info)
        await self.renew()

    async def renew(self) -> None:
        sent = time.monotonic()
        await self.bucket.put_with_ttl(lease_key(self.bridge_id), self._info, self.ttl)
        self._until = sent + self.ttl - self._safety

    async def serve(self) -> None:
        """Renew forever; a failed renewal is logged and retried (the fence does the rest)."""
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self.renew()
            except MeshError as exc:
                log.warning("bridge.lease_renew_failed", bridge=self.bridge_id, error=exc.message)

    async def retire(self) -> None:
        """Drop the lease (a bridge stopping after it closed its connections itself)."""
        self._until = 0.0
        await self.bucket.delete(lease_key(self.bridge_id))


class Reaper:
    """Closes, on their instances, the connections of bridges whose lease expired."""

    def __init__(
        self,
        nc: NatsConnection,
        *,
        period: float = 1.0,
        forget_after: float = 60.0,
        timeout: float = 10.0,  # noqa: ASYNC109 - each close event's deadline, on the wire
        replicas: int = 1,
    ) -> None:
        self.nc = nc
        self.client = MeshClient(nc, default_timeout=timeout)
        self.period = period
        self.forget_after = forget_after
        self.replicas = replicas
        self._bucket: Bucket | None = None
        self._empty_since: dict[str, float] = {}

    async def bucket(self) -> Bucket:
        if self._bucket is None:
            self._bucket = await open_bucket(self.nc, subjects.CONNECTIONS_BUCKET, replicas=self.replicas)
        return self._bucket

    async def serve(self) -> None:
        """Sweep every `period` seconds until cancelled; a failed sweep is logged and retried."""
        await self.bucket()
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.sweep()
            except MeshError as exc:
                log.warning("reaper.sweep_failed", error=exc.message, code=exc.code)

    async def sweep(self) -> int:
        """One pass over the known bridges; returns how many connections it closed."""
        bucket = await self.bucket()
        closed = 0
        for key in await bucket.keys("known."):
            bridge = key.split(".", 1)[1]
            if await bucket.get(lease_key(bridge)) is not None:
                self._empty_since.pop(bridge, None)
                continue
            indexed = await bucket.keys(f"bridge.{bridge}.")
            if not indexed:
                since = self._empty_since.setdefault(bridge, time.monotonic())
                if time.monotonic() - since > self.forget_after:
                    await bucket.delete(key)
                    self._empty_since.pop(bridge, None)
                continue
            self._empty_since.pop(bridge, None)
            closed += await self._reap(bucket, bridge, indexed)
        return closed

    async def _reap(self, bucket: Bucket, bridge: str, indexed: list[str]) -> int:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def close(index: str) -> bool:
            async with gate:
                return await self._close(bucket, bridge, index)

        return sum(await asyncio.gather(*(close(index) for index in indexed)))

    async def _close(self, bucket: Bucket, bridge: str, index: str) -> bool:
        conn_id = index.rsplit(".", 1)[1]
        entry = await bucket.get(index)
        if entry is None:
            return False
        instance = entry[0].decode()
        body = orjson.dumps({"code": GONE_CODE, "reason": "bridge gone"})
        try:
            await self.client.call_raw(f"agents.{instance}", body, headers=event_headers(conn_id, bridge, CLOSE))
        except MeshError as exc:  # the type is not served now, or the owner is moving: next sweep
            log.info("reaper.close_failed", bridge=bridge, connection=conn_id, instance=instance, code=exc.code)
            return False
        log.info("connection.reaped", bridge=bridge, connection=conn_id, instance=instance)
        return True
