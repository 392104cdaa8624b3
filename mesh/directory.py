"""Who owns which instance: a KV map `instance -> worker` plus per-worker leases.

Like Orleans' grain directory. A worker that receives a request for an instance nobody owns claims
it with a KV create; a claim held by a worker whose lease has expired is taken over with a
compare-and-set on the directory entry's revision. A worker's lease is one key in the workers bucket
written with a per-message TTL and renewed every `heartbeat` seconds; the server deletes it when the
worker stops renewing. The worker fences itself: it refuses to start turns or write state once its
last acknowledged renewal is older than `lease_ttl - safety`, which is always before the server can
expire the lease, so a live-but-partitioned worker stops before anyone else may take over. It also
fences itself the moment its connection drops (`fence`): others may then take its instances over
at once (`take_over`, when a forward finds nobody on its subject). Any renewal after a fence bumps
`epoch`, so every activation re-checks ownership and reloads before its next turn; `regain` lets a
fenced worker's mailboxes wait for that renewal, which it asks for at once, instead of refusing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from mesh import wire
from mesh.bus import Bucket
from mesh.errors import MeshError, StateConflict, Unavailable

log = structlog.get_logger("mesh.directory")


FREE = "-"  # the directory value of a released instance (worker ids start with "w")
RETRY_AFTER = 0.2  # seconds between renewal attempts after a failed one
EXPIRY_MARGIN = 0.25  # seconds of clock-rate and rounding slack when judging whether a lease expired
TAKEN_FOR = 2.0  # seconds a takeover's claim is handed to the next `resolve` of its key as it is
MAX_TAKEN = 1024  # takeovers remembered for `resolve` at most (each is normally used at once)


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
        self.epoch = 0  # bumped whenever the lease is regained after lapsing (or after a fence)
        self._info = wire.dumps({"worker": worker_id, "host": socket.gethostname(), "pid": os.getpid()})
        self._renewing = asyncio.Lock()
        self._renewed_at = -1.0  # when the last successful renewal was sent (monotonic)
        self._fenced_by_us = False  # fence() was called (connection lost) since the last renewal
        self._wake = asyncio.Event()  # set to make the heartbeat renew now
        self._attempted = asyncio.Event()  # set (and replaced) after each renewal attempt of the heartbeat
        self._heartbeat_serving = False
        self.on_renew_failed: Callable[[Exception], None] | None = None  # e.g. the runtime's check for a lost store
        self._taken: dict[str, tuple[int, int, float]] = {}  # key -> (revision, epoch, when) of a takeover

    def fenced(self) -> bool:
        """True when this worker can no longer be sure that nobody else considers it dead."""
        return time.monotonic() > self._lease_until

    def fence(self) -> None:
        """Stop acting as an owner at once (the connection dropped: others may take over now)."""
        if self._lease_until:
            log.warning("lease.fenced", worker=self.worker_id, reason="connection lost")
        self._lease_until = 0.0
        self._fenced_by_us = True
        self._wake.set()  # renew as soon as the connection is back

    def renew_now(self) -> None:
        """Have the heartbeat renew the lease now (the connection is back)."""
        self._wake.set()

    async def renew(self) -> None:
        asked = time.monotonic()
        async with self._renewing:
            if self._renewed_at >= asked and not self.fenced():
                return  # a renewal sent after we asked succeeded while we waited for the lock
            sent = time.monotonic()
            await self.workers.put_with_ttl(self.worker_id, self._info, self.lease_ttl)
            acked = time.monotonic()
            # The previous renewal landed after it was sent, so the server keeps the key at least
            # until then + TTL; this one landed before its ack. Acked before that, the key never
            # expired and nobody can have taken an instance over, unless we fenced ourselves.
            may_have_expired = acked >= self._renewed_at + self.lease_ttl - EXPIRY_MARGIN
            if self.fenced() and (self._fenced_by_us or may_have_expired):
                # Others may have taken our instances while the lease lapsed (or since the fence):
                # every activation of an older epoch must re-check ownership and reload its state
                # before its next turn.
                self.epoch += 1
                if self._renewed_at >= 0:
                    log.info("lease.regained", worker=self.worker_id, epoch=self.epoch)
            self._fenced_by_us = False
            self._lease_until = sent + self.lease_ttl - self._safety
            self._renewed_at = sent

    async def serve_heartbeat(self) -> None:
        """Renew the lease forever, every `heartbeat` seconds or at once when asked (`fence`,
        `regain`); failures are logged and retried, the fence does the rest."""
        self._heartbeat_serving = True
        try:
            while True:
                if not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.heartbeat):
                            await self._wake.wait()
                self._wake.clear()
                failed = False
                try:
                    await self.renew()
                except Exception as exc:
                    failed = True
                    log.warning("lease.renew_failed", worker=self.worker_id, error=str(exc))
                    if self.on_renew_failed is not None:
                        self.on_renew_failed(exc)
                finally:
                    attempted, self._attempted = self._attempted, asyncio.Event()
                    attempted.set()
                if failed:  # a failure may come at once (no stream): never retry in a tight loop
                    await asyncio.sleep(min(RETRY_AFTER, self.heartbeat))
        finally:
            self._heartbeat_serving = False

    async def regain(self, timeout: float) -> None:  # noqa: ASYNC109 - a bound on parking, not a network wait
        """Return once the lease is held, asking for a renewal now; `Unavailable` after `timeout`.

        A worker resumed after a pause (or reconnected) parks its mailboxes here instead of
        answering every request `unavailable` until the next heartbeat.
        """
        if not self.fenced():
            return
        try:
            async with asyncio.timeout(timeout):
                while self.fenced():
                    if self._heartbeat_serving:
                        attempted = self._attempted
                        self._wake.set()
                        await attempted.wait()
                    else:
                        await self.renew()
        except TimeoutError:
            raise Unavailable("worker lease lapsed and could not be renewed in time; retry") from None
        except MeshError as exc:
            raise Unavailable(f"worker lease lapsed and could not be renewed: {exc.message}; retry") from exc

    async def is_alive(self, worker_id: str) -> bool:
        if worker_id == self.worker_id:
            return not self.fenced()
        return await self.workers.get(worker_id) is not None

    async def take_over(self, key: str, owner: str, revision: int = 0) -> bool:
        """Claim `key` from `owner`, known gone although its lease may still exist (a forward to it
        found nobody subscribed: the server dropped its connection). Compare-and-set on the entry,
        and only while it still names `owner`; False if it names someone else by now. `revision`
        is the entry's revision when it was read naming `owner` (0: unknown, read it first): a
        compare-and-set on it saves that read, and a conflict falls back to reading."""
        try:
            revision = await self.entries.write(key, self.worker_id.encode(), revision) if revision else 0
        except StateConflict:
            revision = 0
        if not revision:
            found = await self.entries.get(key)
            if found is None or found[0].decode() != owner:
                return False
            try:
                revision = await self.entries.write(key, self.worker_id.encode(), found[1])
            except StateConflict:
                return False
        # The request that found the owner gone is routed again at once and resolves this key:
        # hand it this claim instead of three more round trips (a create that conflicts, a read,
        # and a compare-and-set that only bumps the revision again). Failover time is the point.
        if len(self._taken) >= MAX_TAKEN:
            self._taken.clear()
        self._taken[key] = (revision, self.epoch, time.monotonic())
        log.info("directory.taken_over", key=key, owner=owner, reason="owner unreachable")
        return True

    async def resolve(self, key: str) -> Claim:
        """Find or take the owner of `key`.

        An entry is never deleted: a released instance's entry is set to `FREE`. So a claim that
        *creates* the entry proves the instance was never activated before, and has no state to load.
        A key this worker has just taken over (`take_over`, within `TAKEN_FOR`, same epoch, lease
        held) is ours at that revision without asking again: nobody may take it from a worker
        that holds its lease and has not reconnected since, and the state writes are fenced anyway.
        """
        if self._taken:
            taken = self._taken.pop(key, None)
            if taken is not None and taken[1] == self.epoch and time.monotonic() - taken[2] < TAKEN_FOR and not self.fenced():
                return Claim(self.worker_id, taken[0], False)
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
