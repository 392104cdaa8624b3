"""Fault injection for tests: pause a worker, stall its link to NATS, hold the ack of a state write,
and judge what callers were told against what was stored.

Crashes close sockets, and the server notices; pauses and partitions do not. A SIGSTOPped worker
(GC, swap, a VM migration) or a worker whose link stalls with its TCP connection open keeps its
subscriptions and its place in the queue group, and its writes may be stored while their acks
wait. These tools make those faults on purpose, against real processes and a real nats-server:

    proxy = FaultProxy(nats_server.url)              # one proxy per faulted worker; stop the
    await proxy.start()                              # worker before proxy.close(), or it stops
    worker = await worker_factory(proxy.url, "core_agents", env)   # with no link (its NATS_URL)

    proxy.stall()                                    # partition: bytes held both ways, sockets open
    proxy.release()                                  # held bytes flow again, in order

    held = proxy.hold_after(state_write_marker("counter", "x"))
    ...                                              # the owner's next write of counter/x reaches
    async with asyncio.timeout(10):                  # the server, its ack is held (server->worker
        await held.wait()                            # stalls), and with partition=True nothing
    pause = await pause_for(worker.process.pid, 5)   # the worker sends afterwards gets through

    pid = await owner_pid(client.nc, "counter", "x")  # which worker process owns an instance

    history = History()                              # every call's outcome, with a verdict
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(add_one, names, history, stop, callers=8))
    ...                                              # the fault
    stop.set(); await load
    history.assert_counters({n: (await client.state("counter", n) or {}).get("value", 0) for n in names})

The verdict for a counter that each call increments by one: acknowledged values are distinct
(nothing applied twice under one number), none exceeds the final value (nothing acknowledged was
lost), and final - acknowledged <= the calls whose outcome was reported unknown (every increment
the callers were not told about is accounted for by an "outcome unknown" or a timeout; a definite
error must mean "not applied").

Nothing here imports pytest or the services: apps can use it to test their own agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import os
import random
import signal
import time
import urllib.parse
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh import subjects, wire
from mesh.bus import Connection, bind_bucket
from mesh.directory import FREE
from mesh.errors import MeshError

__all__ = [
    "UNKNOWN_CODES",
    "Call",
    "Direction",
    "FaultProxy",
    "History",
    "Pause",
    "lease_of",
    "owner_of",
    "owner_pid",
    "pause_for",
    "paused",
    "percentile",
    "run_load",
    "state_write_marker",
]

UNKNOWN_CODES = frozenset({"timeout", "outcome_unknown"})
"""Error codes that do not say whether the request took effect (every other error says it did not)."""

CHUNK = 65536
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Direction(enum.Enum):
    TO_SERVER = "to_server"  # what the client (the worker) sends: requests, writes, replies
    TO_CLIENT = "to_client"  # what the server sends: requests for the worker, acks, replies


# -- the proxy ----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Hold:
    pattern: bytes
    partition: bool
    passed: asyncio.Event = field(default_factory=asyncio.Event)


class _Pipe:
    """One direction of one connection: bytes read as they come (the sender never blocks on a
    stall), written on when the proxy lets that direction flow."""

    def __init__(
        self, proxy: FaultProxy, direction: Direction, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.direction = direction
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.eof = False
        self.wake = asyncio.Event()
        self.tail = b""  # the end of the previous chunk, so a pattern split over two reads is found
        self.read_total = 0
        self.written_total = 0
        self.marks: list[tuple[int, _Hold]] = []

    async def pump_in(self) -> None:
        try:
            while data := await self.reader.read(CHUNK):
                if self.direction is Direction.TO_SERVER:
                    self._scan(data)
                self.buffer += data
                self.read_total += len(data)
                self.wake.set()
        finally:
            self.eof = True
            self.wake.set()

    def _scan(self, data: bytes) -> None:
        hold = self.proxy._hold
        if hold is None:
            return
        window = self.tail + data
        if hold.pattern in window:
            # Stall the replies first, then pass the bytes on: the server cannot answer them yet.
            self.proxy._hold = None
            self.proxy.stall(Direction.TO_CLIENT)
            self.marks.append((self.read_total + len(data), hold))
        self.tail = window[-(len(hold.pattern) - 1) :] if len(hold.pattern) > 1 else b""

    async def pump_out(self) -> None:
        while True:
            if self.proxy.flowing(self.direction) and self.buffer:
                data = bytes(self.buffer)
                self.buffer.clear()
                self.writer.write(data)  # handed to the kernel at once unless the transport is backed up
                self.written_total += len(data)
                self._fire_marks()
                await self.writer.drain()
                continue
            if self.proxy.flowing(self.direction) and self.eof:
                self.writer.close()
                return
            self.wake.clear()
            await self.wake.wait()

    def _fire_marks(self) -> None:
        while self.marks and self.marks[0][0] <= self.written_total:
            _, hold = self.marks.pop(0)
            if hold.partition:
                self.proxy.stall(Direction.TO_SERVER)
            hold.passed.set()


class _Link:
    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.writers = (client[1], server[1])
        self.pipes = (
            _Pipe(proxy, Direction.TO_SERVER, client[0], server[1]),
            _Pipe(proxy, Direction.TO_CLIENT, server[0], client[1]),
        )
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for pipe in self.pipes:
            self.tasks.append(loop.create_task(self._guard(pipe.pump_in())))
            self.tasks.append(loop.create_task(self._guard(pipe.pump_out())))

    async def _guard(self, pump: Awaitable[None]) -> None:
        try:
            await pump
        except (OSError, RuntimeError):  # reset or closed under us: the connection is over both ways
            self.abort()

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()

    def held(self, direction: Direction) -> int:
        return sum(len(p.buffer) for p in self.pipes if p.direction is direction)

    async def close(self) -> None:
        self.abort()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class FaultProxy:
    """A TCP proxy between one NATS client (a worker) and nats-server that stalls on command.

    Point the worker's `NATS_URL` at `url`. A stalled direction keeps its sockets open and holds
    its bytes in the proxy (read from the sender at once, so neither end sees back-pressure, as
    with a link that silently stops delivering), and `release` sends them on, in order. A stall
    holds connections made while it lasts, too (the client's reconnects). `cut()` resets every
    connection, as a lost link does; the client then reconnects through the proxy.
    """

    def __init__(self, upstream: str, *, host: str = "127.0.0.1") -> None:
        parsed = urllib.parse.urlsplit(upstream if "://" in upstream else f"nats://{upstream}")
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 4222)
        self.host = host
        self.port = 0
        self.connections = 0  # accepted so far (1 + the client's reconnects)
        self._stalled: set[Direction] = set()
        self._hold: _Hold | None = None
        self._links: set[_Link] = set()
        self._accepting: set[asyncio.StreamWriter] = set()  # accepted, upstream not connected yet
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop accepting, reset every connection, and return once nothing of the proxy runs."""
        if self._server is not None:
            self._server.close()
        for writer in self._accepting:
            writer.transport.abort()
        await asyncio.gather(*(link.close() for link in list(self._links)))
        self._links.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def stall(self, direction: Direction | None = None) -> None:
        """Hold the bytes of `direction` (both if None) until `release`."""
        self._stalled.update(Direction if direction is None else (direction,))
        self._wake()

    def release(self, direction: Direction | None = None) -> None:
        """Let `direction` (both if None) flow again, held bytes first."""
        self._stalled.difference_update(Direction if direction is None else (direction,))
        self._wake()

    def flowing(self, direction: Direction) -> bool:
        return direction not in self._stalled

    def held(self, direction: Direction) -> int:
        """Bytes held in the proxy for `direction` right now."""
        return sum(link.held(direction) for link in self._links)

    def hold_after(self, pattern: bytes, *, partition: bool = False) -> asyncio.Event:
        """Arm a one-shot trap: when the client next sends `pattern` (e.g. `state_write_marker`),
        stall server->client before passing those bytes on, so the server stores the write and its
        ack is held; with `partition`, stall client->server too, right after those bytes are sent.
        The event is set once the bytes holding `pattern` were handed to the server's socket."""
        if not pattern:
            raise ValueError("an empty pattern would match anything")
        self._hold = _Hold(pattern, partition)
        return self._hold.passed

    async def cut(self) -> None:
        """Reset every connection (a lost link: both ends see it close); new ones are accepted."""
        links, self._links = list(self._links), set()
        for writer in self._accepting:
            writer.transport.abort()
        await asyncio.gather(*(link.close() for link in links))

    def _wake(self) -> None:
        for link in self._links:
            for pipe in link.pipes:
                pipe.wake.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._accepting.add(writer)
        try:
            server = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        finally:
            self._accepting.discard(writer)
        if writer.transport.is_closing():  # cut (or closed) while connecting upstream
            server[1].transport.abort()
            return
        link = _Link(self, (reader, writer), server)
        self._links.add(link)
        link.start()
        await asyncio.gather(*link.tasks, return_exceptions=True)
        for w in link.writers:
            w.transport.abort()  # both ends are done: make sure no transport outlives the link
        self._links.discard(link)


def state_write_marker(agent_type: str, name: str) -> bytes:
    """The bytes that start the owner's state write of `(agent_type, name)` on the wire (a PUB or
    HPUB to its `mesh_state` key), for `FaultProxy.hold_after`."""
    key = subjects.instance_key(agent_type, name)
    return f"PUB $KV.{subjects.STATE_BUCKET}.{key} ".encode()


# -- processes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pause:
    pid: int
    started: float  # time.monotonic() at SIGSTOP
    ended: float  # time.monotonic() at SIGCONT

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP `pid` for the block; SIGCONT on the way out, whatever happens (a stopped process
    ignores SIGTERM until it is continued, and a test must never leave one behind)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def pause_for(pid: int, seconds: float) -> Pause:
    """Freeze process `pid` for `seconds` (the fault itself, measured with the monotonic clock)."""
    started = time.monotonic()
    with paused(pid):
        await asyncio.sleep(seconds)
        ended = time.monotonic()
    return Pause(pid, started, ended)


# -- who owns what ------------------------------------------------------------------------------


async def owner_of(nc: Connection, agent_type: str, name: str) -> str | None:
    """The worker id the directory (`mesh_dir`) names as the instance's owner; None when nobody
    has claimed it or it was released. It may name a worker that is dead or paused."""
    bucket = await bind_bucket(nc, subjects.DIRECTORY_BUCKET)
    found = None if bucket is None else await bucket.get(subjects.instance_key(agent_type, name))
    if found is None or found[0].decode() == FREE:
        return None
    return found[0].decode()


async def lease_of(nc: Connection, worker_id: str) -> dict[str, Any] | None:
    """A live worker's lease record `{"worker", "host", "pid"}` (`mesh_workers`), None once expired."""
    bucket = await bind_bucket(nc, subjects.WORKERS_BUCKET)
    found = None if bucket is None else await bucket.get(worker_id)
    if found is None:
        return None
    record: dict[str, Any] = wire.loads(found[0])
    return record


async def owner_pid(nc: Connection, agent_type: str, name: str) -> int | None:
    """The process id of the instance's owner, while its lease is alive (so: before the fault)."""
    owner = await owner_of(nc, agent_type, name)
    lease = None if owner is None else await lease_of(nc, owner)
    return None if lease is None else int(lease["pid"])


# -- history and verdict ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One logical call as its caller saw it: the value it was told, or the error code."""

    instance: str
    started: float  # time.monotonic()
    ended: float
    value: int | None = None
    code: str | None = None
    via: str = ""  # which kind of caller made it (e.g. "client", "raw", "http"), for the test's own checks

    @property
    def ok(self) -> bool:
        return self.code is None

    @property
    def latency(self) -> float:
        return self.ended - self.started


class History:
    """Every call made during a test, and the verdict on counters built from them."""

    def __init__(self, unknown_codes: Iterable[str] = UNKNOWN_CODES) -> None:
        self.unknown_codes = frozenset(unknown_codes)
        self.calls: list[Call] = []

    def add(self, call: Call) -> None:
        self.calls.append(call)

    async def observe(self, instance: str, call: Awaitable[int], *, deadline: float, via: str = "") -> Call:
        """Await `call` (which returns the counter's acknowledged value) and record its outcome: a
        `MeshError` is recorded by its code; a call still running after `deadline` seconds is
        cancelled and recorded as `hung` (a client that ignores its own deadline fails the verdict)."""
        started = time.monotonic()
        value: int | None = None
        code: str | None = None
        try:
            async with asyncio.timeout(deadline):
                value = await call
        except MeshError as exc:
            code = exc.code
        except TimeoutError:
            code = "hung"
        recorded = Call(instance, started, time.monotonic(), value, code, via)
        self.add(recorded)
        return recorded

    def of(self, instance: str) -> list[Call]:
        return [c for c in self.calls if c.instance == instance]

    def acknowledged(self, instance: str) -> list[int]:
        return [c.value for c in self.calls if c.instance == instance and c.ok and c.value is not None]

    def unknown(self, instance: str) -> list[Call]:
        return [c for c in self.calls if c.instance == instance and c.code in self.unknown_codes]

    def instances(self) -> list[str]:
        return sorted({c.instance for c in self.calls})

    def problems(self, finals: Mapping[str, int]) -> list[str]:
        """What contradicts the stored counters, per instance (empty: the history is sound)."""
        found: list[str] = []
        for instance in sorted(set(finals) | set(self.instances())):
            final = finals.get(instance, 0)
            acked = self.acknowledged(instance)
            unknown = len(self.unknown(instance))
            repeated = sorted(v for v, n in Tally(acked).items() if n > 1)
            if repeated:
                found.append(f"{instance}: values acknowledged twice (applied twice): {repeated[:10]}")
            over = sorted(v for v in acked if v > final or v < 1)
            if over:
                found.append(f"{instance}: acknowledged values outside 1..{final} (acknowledged, then lost): {over[:10]}")
            if final - len(acked) > unknown:
                found.append(
                    f"{instance}: final {final} - {len(acked)} acknowledged > {unknown} reported unknown "
                    f"(applied but reported as not applied, or applied twice); errors: {dict(self.codes(instance))}"
                )
            hung = [c for c in self.of(instance) if c.code == "hung"]
            if hung:
                found.append(f"{instance}: {len(hung)} calls outlived their deadline")
        return found

    def assert_counters(self, finals: Mapping[str, int]) -> None:
        problems = self.problems(finals)
        assert not problems, "\n".join([*problems, self.summary()])

    def codes(self, instance: str | None = None, *, via: str | None = None) -> Tally[str]:
        return Tally(
            c.code or "ok" for c in self.calls if (instance is None or c.instance == instance) and (via is None or c.via == via)
        )

    def latencies(self, *, ok_only: bool = True) -> list[float]:
        return [c.latency for c in self.calls if c.ok or not ok_only]

    def summary(self) -> str:
        latencies = self.latencies()
        p50, p99, top = percentile(latencies, 50), percentile(latencies, 99), max(latencies, default=0.0)
        return (
            f"{len(self.calls)} calls, outcomes {dict(self.codes())}; "
            f"latency of successes p50 {p50:.3f} s, p99 {p99:.3f} s, max {top:.3f} s"
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile `q` (0-100) of `values`; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def run_load(
    call: Callable[[str], Awaitable[int]],
    instances: Sequence[str],
    history: History,
    stop: asyncio.Event,
    *,
    callers: int = 8,
    deadline: float = 30.0,
    seed: int = 0,
    via: str = "",
) -> None:
    """`callers` concurrent loops, each calling a random instance with `call(instance)` (one logical
    call: it returns the acknowledged counter value) and recording the outcome in `history`,
    until `stop` is set; each call that runs when `stop` is set finishes (within `deadline`)."""
    if not instances:
        raise ValueError("no instances to call")

    async def caller(rng: random.Random) -> None:
        while not stop.is_set():
            instance = rng.choice(instances)
            await history.observe(instance, call(instance), deadline=deadline, via=via)

    async with asyncio.TaskGroup() as tasks:
        for index in range(callers):
            tasks.create_task(caller(random.Random(seed * 1000 + index)))
