"""Who owns which instance: a KV map `instance -> worker` plus per-worker leases.

Like Orleans' grain directory. A worker that receives a request for an instance nobody owns claims
it with a KV create; a claim held by a worker whose lease has expired is taken over with a
compare-and-set on the directory entry's revision. A worker's lease is one key in the workers bucket
written with a per-message TTL and renewed every `heartbeat` seconds; the server deletes it when the
worker stops renewing. The worker fences itself: it refuses to start turns or write state once its
last acknowledged renewal is older than `lease_ttl - safety`, which is always before the server can
expire the lease, so a live-but-partitioned worker stops before anyone else may take over.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass

import structlog

from mesh import wire
from mesh.bus import Bucket
from mesh.errors import StateConflict, Unavailable

log = structlog.get_logger("mesh.directory")


FREE = "-"  # the directory value of a released instance (worker ids start with "w")


@dataclass(frozen=True, slots=True)
class Claim:
    owner: str
    revision: int
    fresh: bool  # the directory had never seen this instance: it has no stored state


def new_worker_id() -> str:
    return "w" + os.urandom(6).hex()


class Directory:
    def __init__(self, entries: Bucket, workers: Bucket, worker_id: str, *, lease_ttl: int = 6, heartbeat: float = 1.0) -> None:
        if lease_ttl < 2:
            raise ValueError("lease_ttl must be at least 2 seconds (the server's TTL is whole seconds)")
        self.entries = entries
        self.workers = workers
        self.worker_id = worker_id
        self.lease_ttl = lease_ttl
        self._safety = max(1.0, lease_ttl / 4)
        # Renew at least three times within the fence margin, so one slow renewal never fences us.
        self.heartbeat = min(heartbeat, (lease_ttl - self._safety) / 3)
        self._lease_until = 0.0
        self.epoch = 0  # bumped whenever the lease is regained after lapsing
        self._info = wire.dumps({"worker": worker_id, "host": socket.gethostname(), "pid": os.getpid()})

    def fenced(self) -> bool:
        """True when this worker can no longer be sure that nobody else considers it dead."""
        return time.monotonic() > self._lease_until

    async def renew(self) -> None:
        sent = time.monotonic()
        await self.workers.put_with_ttl(self.worker_id, self._info, self.lease_ttl)
        if self.fenced():
            # Others may have taken our instances while the lease lapsed: every activation of an
            # older epoch must re-check ownership and reload its state before its next turn.
            self.epoch += 1
        self._lease_until = sent + self.lease_ttl - self._safety

    async def serve_heartbeat(self) -> None:
        """Renew the lease forever; failures are logged and retried, the fence does the rest."""
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease.renew_failed", worker=self.worker_id, error=str(exc))

    async def is_alive(self, worker_id: str) -> bool:
        if worker_id == self.worker_id:
            return not self.fenced()
        return await self.workers.get(worker_id) is not None

    async def resolve(self, key: str) -> Claim:
        """Find or take the owner of `key`.

        An entry is never deleted: a released instance's entry is set to `FREE`. So a claim that
        *creates* the entry proves the instance was never activated before, and has no state to load.
        """
        for _ in range(8):
            try:
                return Claim(self.worker_id, await self.entries.write(key, self.worker_id.encode(), 0, fresh=True), True)
            except StateConflict:
                pass
            found = await self.entries.get(key)
            if found is None:  # a delete tombstone (older versions deleted entries on release)
                try:
                    return Claim(self.worker_id, await self.entries.write(key, self.worker_id.encode(), 0), False)
                except StateConflict:
                    continue
            owner, revision = found[0].decode(), found[1]
            if owner != FREE and owner != self.worker_id and await self.is_alive(owner):
                return Claim(owner, revision, False)
            try:
                # Free, ours from an earlier activation, or a dead worker's: bump the revision either
                # way, so a release still in flight (at the old revision) cannot undo this claim.
                return Claim(self.worker_id, await self.entries.write(key, self.worker_id.encode(), revision), False)
            except StateConflict:
                continue
        raise Unavailable(f"ownership of {key} kept changing; retry")

    async def release(self, key: str, revision: int) -> None:
        """Mark the instance free (compare-and-set, so a newer claim is never undone)."""
        try:
            await self.entries.write(key, FREE.encode(), revision)
        except StateConflict:
            pass  # someone claimed it since: nothing to release
        except Exception as exc:  # a failed release only delays the next owner until our lease expires
            log.warning("directory.release_failed", key=key, error=str(exc))

    async def retire(self) -> None:
        """Drop this worker's lease so others take over its instances at once."""
        self._lease_until = 0.0
        await self.workers.delete(self.worker_id)
