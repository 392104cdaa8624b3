"""`mesh bench --workers N`: a case measured against N mesh workers and N raw responders.

A scenario that scales out wraps its cases in `async with scale_out(b) as group:` and measures with
`b.pair(..., raw_pid=group.raw_pids, mesh_pid=group.worker_pids)`: the CPU per operation is then
summed over every process of a role. With N = 1 (the default) nothing is started and the group is
the run's main raw responder and worker. The extra processes run the same code as the main ones (the
raw responders share the queue group `raw`, the workers the queue group `mesh`) and are stopped when
the block ends, so the scenarios that do not scale out keep measuring one process per side.

`group.counts(agent_type)` reads every worker's `$SRV.STATS` (turns, and requests that reached the
worker forwarded by another one); the difference of two readings gives a case's forwarded share.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from services.bench import procs
from services.bench.agents import MODEL_URL_ENV

if TYPE_CHECKING:
    from services.bench.scenarios import Bench

STATS_WAIT = 2.0  # seconds to wait for every worker's $SRV.STATS reply


@dataclass(frozen=True)
class Counts:
    """Turns run and requests that arrived forwarded, summed over the workers that answered."""

    turns: int = 0
    forwarded: int = 0
    workers: int = 0

    def share_since(self, before: Counts) -> float | None:
        """The forwarded share of the turns run between `before` and this reading."""
        turns = self.turns - before.turns
        if self.workers != before.workers:  # not the same workers answered: the sums do not compare
            return None
        return round((self.forwarded - before.forwarded) / turns, 4) if turns > 0 else None


@dataclass
class Group:
    """The processes one scaled-out case runs against."""

    workers: int
    raw_pids: list[int]
    worker_pids: list[int]
    nc: Any
    children: list[procs.Child] = field(default_factory=list)

    async def counts(self, agent_type: str) -> Counts:
        """Every worker's `$SRV.STATS.<type>` endpoint data, summed; asked up to three times
        (`STATS_WAIT` each) until every worker answered (a loaded machine may delay one)."""
        found = Counts()
        for _ in range(3):
            found = await self._counts(agent_type)
            if found.workers >= self.workers:
                break
        return found

    async def _counts(self, agent_type: str) -> Counts:
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        turns = forwarded = answered = 0
        try:
            await self.nc.publish(f"$SRV.STATS.{agent_type}", b"", reply=inbox)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STATS_WAIT
            while answered < self.workers and (left := deadline - loop.time()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except TimeoutError:
                    break
                if not msg.data:  # the server's "no responders" status
                    break
                for endpoint in orjson.loads(msg.data).get("endpoints") or ():
                    data = endpoint.get("data") or {}
                    turns += int(data.get("turns", 0))
                    forwarded += int(data.get("forwarded_in", 0))
                answered += 1
        finally:
            await sub.unsubscribe()
        return Counts(turns, forwarded, answered)

    def check_alive(self) -> None:
        for child in self.children:
            child.check_alive()


@asynccontextmanager
async def scale_out(b: Bench) -> AsyncIterator[Group]:
    """Start `b.workers - 1` more mesh workers (the main app) and as many raw responders, for the block."""
    group = Group(b.workers, [b.raw_pid], [b.worker_pid], b.nc)
    extra = b.workers - 1
    if extra <= 0:
        yield group
        return
    recorders: list[Any] = []
    b.progress.note(f"  starting {extra} more mesh worker(s) and raw responder(s) (--workers {b.workers})")
    try:
        raws = [procs.start_raw(b.url, b.model.url, b.workdir / f"raw-{i + 2}.log") for i in range(extra)]
        group.children.extend(raws)
        from services.bench.scenarios import MAIN_APP

        starting = [
            procs.start_worker(b.url, MAIN_APP, b.workdir / f"worker-{i + 2}.log", env={MODEL_URL_ENV: b.model.url})
            for i in range(extra)
        ]
        started = await asyncio.gather(*starting, return_exceptions=True)
        workers = [w for w in started if isinstance(w, procs.Child)]
        group.children.extend(workers)
        failed = [w for w in started if isinstance(w, BaseException)]
        if failed:
            raise failed[0]
        await asyncio.gather(*(raw.wait_for_log(procs.RAW_READY) for raw in raws))
        group.raw_pids += [raw.pid for raw in raws]
        group.worker_pids += [worker.pid for worker in workers]
        for i, child in enumerate(raws):
            recorders.append(b.watch(child, f"raw-{i + 2}"))
        for i, child in enumerate(workers):
            recorders.append(b.watch(child, f"worker-{i + 2}"))
        yield group
        group.check_alive()
    finally:
        for recorder in recorders:
            b.unwatch(recorder)
        for child in reversed(group.children):
            child.stop()
