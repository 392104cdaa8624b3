"""A small mesh for the fault tests: one nats-server, `mesh worker` processes (each, if asked, behind
its own `mesh.faults.FaultProxy`), a client, and the checks those tests share.

    async with open_cluster(folder, workers=2, proxied=True, env={"MESH_LEASE_TTL": "3"}) as cluster:
        first = await cluster.add("x", request_id="r1")          # MeshClient: retries, one id per call
        owner = await cluster.owner("x")                         # the Member whose worker owns counter/x
        await pause_for(owner.pid, 5)
        ...
        assert_one_owner_at_a_time(cluster.turns())

Workers log at debug level in JSON, so every turn that ran is in their logs (`turn.finished`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh import MeshClient, subjects, wire
from mesh.bus import NatsOptions, NatsServer, connect, request
from mesh.faults import FaultProxy, History, owner_of, run_load
from mesh.testing import WorkerProcess

TESTS = Path(__file__).parent
PYTHONPATH = os.pathsep.join([str(TESTS), str(TESTS.parent)])
APP = "core_agents"
CALL_TIMEOUT = 30.0  # every call's deadline (the default of a raw request's Mesh-Timeout-Ms too)


@dataclass
class Member:
    """One worker process of the cluster."""

    index: int
    process: WorkerProcess
    proxy: FaultProxy | None
    worker_id: str

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def alive(self) -> bool:
        return self.process.process.poll() is None


class Cluster:
    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = {"PYTHONPATH": PYTHONPATH, "MESH_LOG_LEVEL": "debug", **env}
        self.server = NatsServer(folder / "nats-store")
        self.members: list[Member] = []
        self.client: MeshClient

    async def start(self, workers: int, proxied: bool) -> None:
        await self.server.start()
        nc = await connect(NatsOptions.from_url(self.server.url, name="fault-test"))
        self.client = MeshClient(nc, default_timeout=CALL_TIMEOUT)
        for _ in range(workers):  # one after another: on a busy 2-core machine, at once is slower
            await self.add_worker(proxied)

    async def add_worker(self, proxied: bool) -> Member:
        """Start one more worker (behind a proxy of its own if `proxied`); return once it serves,
        its durable delivery included (a fault in its first second would hit its start-up)."""
        proxy = None
        if proxied:
            proxy = FaultProxy(self.server.url)
            await proxy.start()
        member = self.spawn(proxy)
        await member.process.wait_logged('"durable.started"')
        member.worker_id = _worker_id(member.process.log_text())
        return member

    def spawn(self, proxy: FaultProxy | None) -> Member:
        """Start a worker process (through `proxy`, if given) without waiting for it; its
        `worker_id` is left empty."""
        index = len(self.members)
        url = proxy.url if proxy else self.server.url
        member = Member(index, WorkerProcess(url, APP, self.folder / f"worker-{index}.log", self.env), proxy, "")
        self.members.append(member)
        return member

    async def stop(self) -> None:
        for member in self.members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.pid, signal.SIGCONT)  # never leave a stopped worker behind
            if member.proxy is not None:
                member.proxy.release()
        # All at once, and before their proxies close, so each stops gracefully over its link.
        await asyncio.gather(*(m.process.terminate(timeout=5.0) for m in self.members))
        for member in self.members:
            if member.proxy is not None:
                await member.proxy.close()
        with contextlib.suppress(Exception):
            await self.client.close()
        self.server.stop()

    async def restart_server(self) -> None:
        """SIGKILL the nats-server and start it again on the same store and port (workers and the
        client reconnect by themselves)."""
        self.server.kill()
        self.server = NatsServer(self.folder / "nats-store", port=self.server.port)
        await self.server.start()

    def live(self) -> list[Member]:
        return [m for m in self.members if m.alive()]

    def member(self, worker_id: str | None) -> Member | None:
        return next((m for m in self.members if m.worker_id == worker_id), None)

    async def owner(self, name: str, agent_type: str = "counter") -> Member | None:
        return self.member(await owner_of(self.client.nc, agent_type, name))

    async def owners(self, names: Iterable[str]) -> dict[str, Member | None]:
        return {name: await self.owner(name) for name in names}

    async def busiest(self, names: Iterable[str]) -> tuple[Member, list[str]]:
        """The live member owning the most of `names`, and those names."""
        by_member: dict[int, list[str]] = defaultdict(list)
        for name, member in (await self.owners(names)).items():
            if member is not None and member.alive():
                by_member[member.index].append(name)
        assert by_member, "none of the instances has a live owner"
        index = max(by_member, key=lambda i: len(by_member[i]))
        return self.members[index], by_member[index]

    async def final(self, name: str) -> int:
        state = await self.client.state("counter", name)
        return 0 if state is None else int(state["value"])

    async def finals(self, names: Iterable[str]) -> dict[str, int]:
        return {name: await self.final(name) for name in names}

    async def add(self, name: str, *, request_id: str | None = None, timeout: float = CALL_TIMEOUT) -> int:
        """Add 1 through MeshClient (its retries; `request_id` pins the call's id)."""
        extra: dict[str, Any] = {} if request_id is None else {"request_id": request_id}
        reply = await self.client.call("counter", name, {"add": 1}, timeout=timeout, **extra)
        return int(reply["value"])

    async def add_raw(self, name: str, *, timeout: float = CALL_TIMEOUT) -> int:
        """Add 1 as a plain NATS client does: one request, no id, no retry; its reply must be true."""
        msg = await request(self.client.nc, subjects.agent_subject("counter", name), b'{"add":1}', timeout=timeout)
        err = wire.error_of(msg.headers, msg.data)
        if err is not None:
            raise err
        return int(wire.loads(msg.data)["value"])

    def turns(self) -> list[dict[str, Any]]:
        """Every turn that ran on any worker (its `turn.finished` log line), with the member index."""
        found = []
        for member in self.members:
            for line in member.process.log_text().splitlines():
                if '"turn.finished"' in line:
                    record = json.loads(line)
                    record["member"] = member.index
                    found.append(record)
        return found

    def turns_of(self, name: str, agent_type: str = "counter") -> list[dict[str, Any]]:
        return [t for t in self.turns() if t["agent_type"] == agent_type and t["agent_name"] == name]


def _worker_id(log: str) -> str:
    for line in log.splitlines():
        if '"worker.started"' in line:
            return str(json.loads(line)["worker"])
    raise AssertionError(f"no worker.started line in the log:\n{log[-2000:]}")


@contextlib.asynccontextmanager
async def open_cluster(
    folder: Path, *, workers: int, proxied: bool = False, env: dict[str, str] | None = None
) -> AsyncIterator[Cluster]:
    cluster = Cluster(folder, env or {})
    try:
        await cluster.start(workers, proxied)
        yield cluster
    finally:
        await cluster.stop()


@dataclass(frozen=True)
class Frozen:
    """When a member was paused or partitioned, in wall-clock seconds (as the turn logs are)."""

    member: int
    started: float
    ended: float

    @classmethod
    def since(cls, member: Member, started_monotonic: float) -> Frozen:
        offset = time.time() - time.monotonic()
        return cls(member.index, started_monotonic + offset, time.time())

    def cuts(self, start: float, end: float) -> bool:
        return start < self.ended and end > self.started


def assert_one_owner_at_a_time(turns: list[dict[str, Any]], frozen: Iterable[Frozen] = ()) -> None:
    """Turns of one instance never overlap, and once another worker has run a turn of it, an earlier
    owner runs none (a resumed owner that lost the instance must not run a stale turn).

    A turn that a freeze of its worker cut in two (`frozen`) may overlap the next owner's turns:
    nothing can stop a takeover while a frozen worker is mid-turn; its state write then fails.
    """
    frozen = list(frozen)
    by_instance: dict[tuple[str, str], list[tuple[float, float, int]]] = defaultdict(list)
    for t in turns:
        by_instance[(t["agent_type"], t["agent_name"])].append((t["started_at"], t["ended_at"], t["member"]))
    problems = []
    for instance, runs in by_instance.items():
        runs.sort()
        for (s1, e1, m1), (s2, e2, m2) in zip(runs, runs[1:], strict=False):
            if s2 < e1 and not any(f.member == m1 and f.cuts(s1, e1) for f in frozen):
                problems.append(f"turns of {instance} overlap: {(s1, e1, m1)} and {(s2, e2, m2)}")
        owners: list[int] = []
        for _, _, member in runs:
            if not owners or owners[-1] != member:
                owners.append(member)
        if len(owners) != len(set(owners)):
            problems.append(f"{instance}: a worker ran turns again after another had taken over: {owners}")
    assert not problems, "\n".join(problems)


def recovered(history: History, names: Iterable[str], after: float, via: str | None = None) -> bool:
    """True once every instance in `names` has a successful call that started after `after`."""
    missing = [n for n in names if not any(c.ok and c.started > after and (via is None or c.via == via) for c in history.of(n))]
    assert not missing, f"no success since the fault for {missing}"
    return True


async def mixed_load(
    cluster: Cluster, names: list[str], history: History, stop: asyncio.Event, *, clients: int = 6, raw: int = 2
) -> None:
    """`clients` MeshClient callers (`via="client"`) and `raw` plain-request callers (`via="raw"`)
    adding 1 to random instances of `names` until `stop` is set."""
    async with asyncio.TaskGroup() as tasks:
        guard = CALL_TIMEOUT + 5
        tasks.create_task(run_load(cluster.add, names, history, stop, callers=clients, deadline=guard, via="client"))
        if raw:
            tasks.create_task(run_load(cluster.add_raw, names, history, stop, callers=raw, deadline=guard, seed=1, via="raw"))


@contextlib.asynccontextmanager
async def loaded(cluster: Cluster, names: list[str], history: History, *, clients: int = 6, raw: int = 2) -> AsyncIterator[None]:
    """`mixed_load` for the duration of the block; on the way out the calls in flight finish (each
    within its deadline) and are recorded."""
    stop = asyncio.Event()
    task = asyncio.create_task(mixed_load(cluster, names, history, stop, clients=clients, raw=raw))
    try:
        yield
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def probing(cluster: Cluster, names: list[str], history: History, *, every: float = 0.25) -> AsyncIterator[None]:
    """Start a MeshClient call (`via="client"`) of every instance every `every` seconds, without
    waiting for the previous one, for the duration of the block: when an instance answers again
    shows at once, not when a waiting call's next retry happens to go out. The calls in flight
    finish on the way out."""
    stop = asyncio.Event()
    calls: set[asyncio.Task[Any]] = set()

    async def probe(name: str) -> None:
        while not stop.is_set():
            task = asyncio.create_task(history.observe(name, cluster.add(name), deadline=CALL_TIMEOUT + 5, via="client"))
            calls.add(task)
            task.add_done_callback(calls.discard)
            await asyncio.sleep(every)  # the probes' pace

    probers = [asyncio.create_task(probe(name)) for name in names]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*probers)
        await asyncio.gather(*list(calls))
