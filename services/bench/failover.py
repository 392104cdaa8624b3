"""The `failover` scenario: SIGKILL the worker that owns busy instances, time the way back to service.

Two mesh worker processes of its own serve `bench-fail` (a counter, the `turn` scenario's agent
under a type nobody else serves). One caller per instance adds 1 in a loop through `MeshClient`
(request ids, resends), every outcome recorded in a `mesh.faults.History`. Each round SIGKILLs the
worker that owns the most instances, measures for every instance it owned the time from the kill
to the first successful reply that reached a caller after it (what a user waits for), then starts
a fresh worker, so the next round again has two. At the end the final counters
are read and judged against every acknowledged reply: an acknowledged value above the final one was
lost, one acknowledged twice was applied twice, and an increment nobody was told about must be
covered by a call whose outcome was reported unknown.

There is no raw baseline (a hand-written nats-py responder has no ownership to hand over): the raw
columns stay empty and the target is absolute, p99 <= 1 s from SIGKILL to service. Recovery here
rests on the owner's connection closing with its process: the next forward to it finds nobody on
its subject and takes the instance over at once (subjects.md, "One turn at a time"), well before
its 6 s lease could expire.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections import Counter as Tally
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mesh.bus import NatsOptions, connect
from mesh.client import MeshClient
from mesh.errors import MeshError
from mesh.faults import History, owner_of, percentile
from services.bench import procs
from services.bench.agents import BenchTurn
from services.bench.load import Measure

if TYPE_CHECKING:
    from services.bench.scenarios import Bench, Result

AGENT_TYPE = "bench-fail"
APP = "services.bench.failover:AGENTS"
WORKERS = 2
PER_CLIENT = 8  # callers sharing one MeshClient (and its resend budget), as many processes would
RECOVERY_TARGET = 1.0  # seconds from SIGKILL to the first successful reply of each affected instance
WITHIN = 20.0  # seconds a round waits for every affected instance before it gives up (and fails)


class BenchFailover(BenchTurn):
    """A persisted counter, served only by the failover scenario's workers."""

    type = AGENT_TYPE


AGENTS = [BenchFailover]


@dataclass
class _Worker:
    child: procs.Child
    worker_id: str
    recorder: Any


async def failover(b: Bench) -> list[Result]:
    from services.bench.scenarios import Result

    names = [f"f{b.run_id}-{i}" for i in range(b.sizes.failover_instances)]
    rounds = b.sizes.failover_rounds
    workers: list[_Worker] = []
    clients: list[MeshClient] = []
    history = History()
    stop = asyncio.Event()
    answered = asyncio.Event()  # set after every call: what the waits below wake on
    gaps: list[float] = []
    unrecovered = 0
    loads: list[asyncio.Task[None]] = []
    try:
        first = await asyncio.gather(*(_start(b, n) for n in range(WORKERS)), return_exceptions=True)
        workers += [w for w in first if isinstance(w, _Worker)]  # stopped below, even if another failed to start
        for failed in first:
            if isinstance(failed, BaseException):
                raise failed
        for _ in range(0, len(names), PER_CLIENT):
            clients.append(MeshClient(await connect(NatsOptions.from_url(b.url, name="mesh-bench-failover")), default_timeout=15))
        loads = [
            asyncio.create_task(_probe(clients[i // PER_CLIENT], name, history, stop, answered)) for i, name in enumerate(names)
        ]
        started = time.monotonic()
        await _until(history, names, started, "every instance answering", loads, answered)
        for r in range(rounds):
            owned = {name: await owner_of(b.nc, AGENT_TYPE, name) for name in names}
            by_id = {w.worker_id: w for w in workers}
            busiest = Tally(o for o in owned.values() if o in by_id).most_common(1)
            if not busiest:
                raise RuntimeError(f"failover: no live worker owns any instance: {owned}")
            victim_id, count = busiest[0]
            theirs = [name for name, owner in owned.items() if owner == victim_id]
            victim = by_id[victim_id]
            killed_at = time.monotonic()
            victim.child.process.kill()
            at = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S.%f")[:-3]  # to line up with the workers' logs
            b.progress.note(f"  failover round {r + 1}/{rounds}: SIGKILL {victim_id} at {at} (owned {count} of {len(names)})")
            await asyncio.to_thread(victim.child.process.wait)
            b.unwatch(victim.recorder)
            victim.child.stop()
            workers.remove(victim)
            try:
                await _until(history, theirs, killed_at, f"round {r + 1} recovery", loads, answered)
            except TimeoutError:
                pass  # counted below: an instance without a reply is a failed round, not a crashed bench
            for name in theirs:
                gap = _first_success_after(history, name, killed_at)
                if gap is None:
                    unrecovered += 1
                else:
                    gaps.append(gap)
            if r + 1 < rounds:  # a fresh worker for the next round, which again has two
                workers.append(await _start(b, WORKERS + r))
                settled = time.monotonic()
                await _until(history, names, settled, f"round {r + 1} settling", loads, answered)
        stop.set()
        await asyncio.gather(*loads)
        finals = {name: await _final(b.client, name) for name in names}
        for w in workers:
            w.child.check_alive()
    finally:
        stop.set()
        for task in loads:
            task.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        for client in clients:
            await client.close()
        for w in workers:
            b.unwatch(w.recorder)
            w.child.stop()
    verdict = _verdict(history, finals)
    calls = [c for c in history.calls if c.ok]
    wall = max((c.ended for c in history.calls), default=0.0) - min((c.started for c in history.calls), default=0.0)
    mesh = Measure(
        ops=len(calls),
        errors=len(history.calls) - len(calls),
        wall_s=round(wall, 3),
        ops_per_s=round(len(calls) / wall, 1) if wall > 0 else 0.0,
        p50_ms=round(percentile(gaps, 50) * 1000, 1),
        p99_ms=round(percentile(gaps, 99) * 1000, 1),
        extra={"max_recovery_ms": round(max(gaps, default=0.0) * 1000, 1)},
    )
    raw = Measure(0, 0, 0.0, 0.0, 0.0, 0.0)
    met = bool(gaps) and unrecovered == 0 and percentile(gaps, 99) <= RECOVERY_TARGET and not verdict["problems"]
    notes = {
        "raw": "no baseline (nothing to fail over); mesh p50/p99 = ms from SIGKILL to the first reply",
        "rounds": rounds,
        "workers": WORKERS,
        "instances": len(names),
        "affected": len(gaps) + unrecovered,
        "unrecovered": unrecovered,
        "outcomes": dict(history.codes()),
        **{k: v for k, v in verdict.items() if k != "problems"},
        "problems": verdict["problems"][:3],
    }
    target = f"p99 <= {RECOVERY_TARGET * 1000:g} ms from SIGKILL to a reply; nothing acknowledged lost or applied twice"
    case = f"{len(names)} instances, {rounds} kills"
    return [Result("failover", case, "ms kill to reply", raw, mesh, target, met, notes=notes)]


async def _start(b: Bench, index: int) -> _Worker:
    child = await procs.start_worker(b.url, APP, b.workdir / f"worker-failover-{index}.log")
    return _Worker(child, _worker_id(child), b.watch(child, f"worker-failover-{index}"))


def _worker_id(child: procs.Child) -> str:
    for line in child.log_text().splitlines():
        if '"worker.started"' in line:
            return str(json.loads(line)["worker"])
    raise RuntimeError(f"the failover worker has not logged worker.started:\n{child.log_text()[-2000:]}")


async def _probe(client: MeshClient, name: str, history: History, stop: asyncio.Event, answered: asyncio.Event) -> None:
    async def add_one() -> int:
        return int((await client.call(AGENT_TYPE, name, {"add": 1}, timeout=15))["n"])

    while not stop.is_set():
        await history.observe(name, add_one(), deadline=30)
        answered.set()


def _answered(history: History, names: list[str], moment: float) -> bool:
    """Every one of `names` has had a successful call end after `moment`."""
    return all(_first_success_after(history, name, moment) is not None for name in names)


def _first_success_after(history: History, name: str, moment: float) -> float | None:
    ends = [c.ended for c in history.of(name) if c.ok and c.ended > moment]
    return min(ends) - moment if ends else None


async def _until(
    history: History,
    names: list[str],
    moment: float,
    what: str,
    loads: list[asyncio.Task[None]],
    answered: asyncio.Event,
    within: float = WITHIN,
) -> None:
    """Wait until each of `names` has had a successful reply after `moment`, checked after each
    call ends (`answered`), for up to `within` seconds; a caller loop that failed ends the wait
    with its error."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not _answered(history, names, moment):
        for task in loads:
            if task.done() and task.exception() is not None:
                raise RuntimeError(f"a failover caller failed during {what}") from task.exception()
        answered.clear()
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await answered.wait()
        except TimeoutError:
            raise TimeoutError(f"failover: no {what} within {within:g}s") from None


async def _final(client: MeshClient, name: str) -> int:
    try:
        state = await client.state(AGENT_TYPE, name)
    except MeshError:
        return -1
    return int(state["n"]) if state else 0


def _verdict(history: History, finals: dict[str, int]) -> dict[str, Any]:
    """Counts of what contradicts the final counters (`History`'s verdict, itemized)."""
    lost = doubled = unaccounted = 0
    for name, final in finals.items():
        acked = history.acknowledged(name)
        doubled += sum(n - 1 for n in Tally(acked).values() if n > 1)
        lost += sum(1 for v in acked if v > final or v < 1)
        unaccounted += max(0, final - len(acked) - len(history.unknown(name)))
    return {
        "acknowledged": sum(len(history.acknowledged(n)) for n in finals),
        "lost": lost,
        "applied_twice": doubled,
        "unaccounted": unaccounted,
        "problems": history.problems(finals),
    }
