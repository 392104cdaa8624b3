"""The scenarios: each runs the raw baseline, then the mesh path, on the same server.

A scenario is an async function `(Bench) -> list[Result]`, registered in `SCENARIOS`. To measure a
new front door (the HTTP bridge, the mail service), add a function here that starts its own
baseline and service processes like `activation` does, and register it under its name.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client

from mesh import subjects
from mesh.bus import free_port
from mesh.client import MeshClient
from services.bench import durable, llm, procs
from services.bench.clients import HttpPool, ProtocolError, SmtpPool, mail_message
from services.bench.failover import failover as failover_scenario
from services.bench.load import Measure, Op, Progress, drive, merge, process_cpu
from services.bench.raw import SUBJECT_PREFIX
from services.bench.scale import Counts, scale_out
from services.bench.stub_model import StubModel


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does; `QUICK` is for tests and smoke runs, not for figures."""

    invoke_c1: int
    invoke_c64: int
    turn_instances: int
    turn_ops: int
    hot_ops: int
    activations: int
    slow_instances: int
    slow_delay: float
    idle_timeout: float
    http_ops: int
    mail_ops: int
    durable_instances: int = 1_000
    durable_msgs: int = 10_000
    durable_hot_msgs: int = 3_000
    failover_instances: int = 48
    failover_rounds: int = 5
    llm_conversations: int = 500


ROUNDS = 3  # alternating rounds per case, see Bench.pair

# The activation worker's idle timeout outlasts its run, so that eviction does not compete with
# the first touches being measured; the scenario then waits for it.
FULL = Sizes(3_000, 30_000, 10_000, 30_000, 10_000, 100_000, 1_000, 1.0, 60.0, 10_000, 3_000)
QUICK = Sizes(
    200,
    1_000,
    200,
    1_000,
    300,
    500,
    50,
    1.0,
    1.0,
    300,
    100,
    durable_instances=50,
    durable_msgs=500,
    durable_hot_msgs=300,
    failover_instances=16,
    failover_rounds=2,
    llm_conversations=24,
)


def scaled(sizes: Sizes, factor: float) -> Sizes:
    """`sizes` with every count multiplied by `factor` (at least 1); delays unchanged."""
    counts = {
        f: max(1, round(getattr(sizes, f) * factor))
        for f in (
            "invoke_c1",
            "invoke_c64",
            "turn_instances",
            "turn_ops",
            "hot_ops",
            "activations",
            "slow_instances",
            "http_ops",
            "mail_ops",
            "durable_instances",
            "durable_msgs",
            "durable_hot_msgs",
            "failover_instances",
            "llm_conversations",
        )
    }
    return replace(sizes, **counts)


@dataclass
class Result:
    scenario: str
    case: str
    unit: str
    raw: Measure
    mesh: Measure
    target: str
    met: bool | None
    ratio: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ratio = round(self.mesh.ops_per_s / self.raw.ops_per_s, 3) if self.raw.ops_per_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "case": self.case,
            "unit": self.unit,
            "ratio": self.ratio,
            "p50_ratio": round(self.mesh.p50_ms / self.raw.p50_ms, 3) if self.raw.p50_ms else None,
            "raw": self.raw.as_dict(),
            "mesh": self.mesh.as_dict(),
            "target": self.target,
            "met": self.met,
            **({"notes": self.notes} if self.notes else {}),
        }


@dataclass
class Bench:
    """What every scenario gets: the server, one client connection, the stub model, sizes."""

    url: str
    nc: Client
    client: MeshClient
    model: StubModel
    sizes: Sizes
    progress: Progress
    run_id: str
    workdir: Path
    raw_pid: int = 0
    worker_pid: int = 0
    server_pid: int | None = None
    profile_dir: Path | None = None
    recorders: list[Any] = field(default_factory=list)
    workers: int = 1  # --workers: mesh workers and raw responders of the cases that scale out (`scale.scale_out`)

    async def drive(
        self, op: Op, total: int, concurrency: int, label: str, responder: int | Sequence[int], offset: int = 0
    ) -> Measure:
        """`load.drive` with CPU probes on the caller (this process), `responder` (summed over the
        processes, if several) and nats-server."""
        pids = [responder] if isinstance(responder, int) else list(responder)
        cpu = {"caller": time.process_time, "responder": lambda: sum(process_cpu(pid) for pid in pids)}
        if self.server_pid is not None:
            server = self.server_pid
            cpu["server"] = lambda: process_cpu(server)
        return await drive(op, total, concurrency, self.progress, label, cpu=cpu, offset=offset)

    async def pair(
        self,
        raw_op: Op,
        mesh_op: Op,
        total: int,
        concurrency: int,
        label: str,
        *,
        raw_pid: int | Sequence[int] | None = None,
        mesh_pid: int | Sequence[int] | None = None,
    ) -> tuple[Measure, Measure]:
        """Both sides of one case, in `ROUNDS` alternating rounds (raw, mesh, raw, mesh, ...).

        A shared VM's speed drifts by tens of percent over seconds; alternating puts both sides
        under the same drift, so their ratio holds still where one long run of each would not.
        Each round uses its own operation indices, so a first touch stays a first touch. The CPU
        probes watch the raw responder and the main worker unless `raw_pid` / `mesh_pid` say otherwise.
        """
        rounds = max(1, min(ROUNDS, total // 100))
        raws: list[Measure] = []
        meshes: list[Measure] = []
        start = 0
        for r in range(rounds):
            count = total // rounds + (1 if r < total % rounds else 0)
            tag = f" ({r + 1}/{rounds})" if rounds > 1 else ""
            raws.append(await self.drive(raw_op, count, concurrency, f"{label} raw{tag}", raw_pid or self.raw_pid, start))
            meshes.append(await self.drive(mesh_op, count, concurrency, f"{label} mesh{tag}", mesh_pid or self.worker_pid, start))
            start += count
        return merge(raws), merge(meshes)

    def watch(self, child: procs.Child, name: str) -> Any:
        """Profile `child` with py-spy when `--profile` asked for it; returns the recorder or None."""
        if self.profile_dir is None:
            return None
        from services.bench.profile import Recorder

        recorder = Recorder(child.pid, self.profile_dir / f"{name}.txt")
        self.recorders.append(recorder)
        return recorder

    def unwatch(self, recorder: Any) -> None:
        """Stop one recorder from `watch` (a process that ends before the run does)."""
        if recorder is not None:
            recorder.stop()
            self.recorders.remove(recorder)

    def stop_recorders(self) -> None:
        while self.recorders:
            self.recorders.pop().stop()

    async def raw(self, subject: str, data: bytes, timeout: float = 30.0) -> bytes:  # noqa: ASYNC109 (the request's own)
        msg = await self.nc.request(f"{SUBJECT_PREFIX}.{subject}", data, timeout=timeout)
        if msg.data.startswith(b'{"error"'):
            raise RuntimeError(msg.data.decode(errors="replace"))
        return msg.data

    async def mesh(self, agent_type: str, name: str, data: bytes, timeout: float = 30.0) -> Any:  # noqa: ASYNC109 (on the wire)
        return await self.client.call(agent_type, name, data, timeout=timeout)


ECHO = b'{"i":1}'
BUMP = b'{"add":1}'


async def invoke(b: Bench) -> list[Result]:
    raw_op = lambda i: b.raw("echo", ECHO)  # noqa: E731
    mesh_op = lambda i: b.mesh("bench-echo", "b", ECHO)  # noqa: E731
    results = []
    async with scale_out(b) as group:
        await drive(raw_op, 50 * b.workers, 8, b.progress, "invoke warm-up raw")
        await drive(mesh_op, 50 * b.workers, 8, b.progress, "invoke warm-up mesh")
        for concurrency, total in ((1, b.sizes.invoke_c1), (64, b.sizes.invoke_c64)):
            before = await group.counts("bench-echo")
            label = f"invoke c={concurrency}" + (f" workers={b.workers}" if b.workers > 1 else "")
            raw, mesh = await b.pair(
                raw_op, mesh_op, total, concurrency, label, raw_pid=group.raw_pids, mesh_pid=group.worker_pids
            )
            notes = _worker_notes(b, before, await group.counts("bench-echo"))
            if concurrency == 1:
                target = "p50 <= 1.5 x raw"
                met = mesh.p50_ms <= 1.5 * raw.p50_ms
            else:
                target = "ops/s >= 0.8 x raw"
                met = mesh.ops_per_s >= 0.8 * raw.ops_per_s
            results.append(Result("invoke", f"c={concurrency}", "requests", raw, mesh, target, met, notes=notes))
    return results


async def turn(b: Bench) -> list[Result]:
    n = b.sizes.turn_instances
    raw_op = lambda i: b.raw(f"turn.t{b.run_id}-{i % n}", BUMP)  # noqa: E731
    mesh_op = lambda i: b.mesh("bench-turn", f"t{b.run_id}-{i % n}", BUMP)  # noqa: E731
    async with scale_out(b) as group:
        # First touches are the activation scenario's business: create every instance before timing.
        await drive(raw_op, n, 64, b.progress, f"turn create {n} raw")
        await drive(mesh_op, n, 64, b.progress, f"turn create {n} mesh")
        before = await group.counts("bench-turn")
        label = f"turn {n} instances c=64" + (f" workers={b.workers}" if b.workers > 1 else "")
        raw, mesh = await b.pair(raw_op, mesh_op, b.sizes.turn_ops, 64, label, raw_pid=group.raw_pids, mesh_pid=group.worker_pids)
        notes = _worker_notes(b, before, await group.counts("bench-turn"))
    met = mesh.ops_per_s >= raw.ops_per_s
    target = "ops/s >= 1.0 x raw"
    if b.workers > 1:
        share = notes.get("forwarded_share")
        met = met and share is not None and share <= 0.05
        target += "; forwarded share <= 5 %"
    return [Result("turn", f"{n} instances c=64", "persisted turns", raw, mesh, target, met, notes=notes)]


def _worker_notes(b: Bench, before: Counts, after: Counts) -> dict[str, Any]:
    """A scaled-out case's notes: how many processes per side, and the share of the mesh side's
    turns that reached their worker forwarded (two hops) rather than sent to the owner."""
    return {"workers": b.workers, "forwarded_share": after.share_since(before), "workers_reporting": after.workers}


async def hot(b: Bench) -> list[Result]:
    raw_op = lambda i: b.raw(f"hot.h{b.run_id}", BUMP)  # noqa: E731
    mesh_op = lambda i: b.mesh("bench-turn", f"h{b.run_id}", BUMP)  # noqa: E731
    raw, mesh = await b.pair(raw_op, mesh_op, b.sizes.hot_ops, 64, "hot 1 instance c=64")
    final = await b.client.state("bench-turn", f"h{b.run_id}")
    notes = {"mesh_state_n": final["n"] if final else None, "expected_n": mesh.ops}
    met = mesh.ops_per_s >= 1500
    return [Result("hot", "1 instance c=64", "persisted turns", raw, mesh, "mesh >= 1,500 turns/s", met, notes=notes)]


async def activation(b: Bench) -> list[Result]:
    n = b.sizes.activations
    worker = await procs.start_worker(
        b.url,
        "services.bench.agents:ACTIVATION_AGENTS",
        b.workdir / "worker-activation.log",
        env={"MESH_IDLE_TIMEOUT": str(b.sizes.idle_timeout)},
    )
    recorder = b.watch(worker, "worker-activation")
    try:
        rss_start, _ = worker.memory_mb()
        raw, mesh = await b.pair(
            lambda i: b.raw(f"turn.a{b.run_id}-{i}", BUMP),
            lambda i: b.mesh("bench-act", f"a{b.run_id}-{i}", BUMP),
            n,
            64,
            f"activation {n}",
            mesh_pid=worker.pid,
        )
        rss_end, rss_peak = worker.memory_mb()
        evicted = await _wait_evicted(b, "bench-act", within=b.sizes.idle_timeout * 2 + 30)
        rss_idle, _ = worker.memory_mb()
        worker.check_alive()
    finally:
        b.unwatch(recorder)
        worker.stop()
    notes = {
        "worker_rss_start_mb": round(rss_start, 1),
        "worker_rss_end_mb": round(rss_end, 1),
        "worker_peak_rss_mb": round(rss_peak, 1),
        "worker_rss_after_eviction_mb": round(rss_idle, 1),
        "evicted_all": evicted,
        "idle_timeout_s": b.sizes.idle_timeout,
    }
    met = mesh.ops_per_s >= 1.2 * raw.ops_per_s and rss_peak <= 300 and rss_idle <= 150 and evicted
    target = "ops/s >= 1.2 x raw; peak RSS <= 300 MB; <= 150 MB after eviction"
    return [Result("activation", f"{n} new instances c=64", "first touches", raw, mesh, target, met, notes=notes)]


async def _wait_evicted(b: Bench, agent_type: str, within: float) -> bool:
    """Poll the worker's `$SRV.STATS` until it holds no activations of `agent_type`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    b.progress.note(f"  activation: waiting for idle eviction (idle_timeout {b.sizes.idle_timeout}s)")
    while loop.time() < deadline:
        try:
            msg = await b.nc.request(f"$SRV.STATS.{agent_type}", b"", timeout=2.0)
            data = orjson.loads(msg.data)["endpoints"][0].get("data") or {}
            if data.get("activations") == 0:
                return True
        except Exception:
            pass
        await asyncio.sleep(0.25)
    return False


async def slow(b: Bench) -> list[Result]:
    n = b.sizes.slow_instances

    async def side(label: str, op: Op, responder: int) -> Measure:
        b.model.reset()
        measure = await b.drive(op, n, n, f"slow {n} instances ({b.model.delay:g}s model) {label}", responder)
        measure.extra["peak_in_flight"] = b.model.peak
        return measure

    raw = await side("raw", lambda i: b.raw(f"slow.s{b.run_id}-{i}", BUMP, timeout=60), b.raw_pid)
    mesh = await side("mesh", lambda i: b.mesh("bench-slow", f"s{b.run_id}-{i}", BUMP, timeout=60), b.worker_pid)
    limit = b.model.delay + 1.0
    met = mesh.errors == 0 and mesh.wall_s <= limit
    notes = {"raw_wall_s": raw.wall_s, "mesh_wall_s": mesh.wall_s, "serial_peer_wall_s": n * b.model.delay}
    target = f"all {n} done within {limit:g}s wall on one worker"
    return [Result("slow", f"{n} instances, one worker", "turns", raw, mesh, target, met, notes=notes)]


async def http(b: Bench) -> list[Result]:
    """The HTTP bridge (`mesh http`) against a minimal Starlette route making the same NATS request."""
    n, concurrency = b.sizes.http_ops, 64
    mesh_port, raw_port = free_port(), free_port()
    bridge = procs.Child(
        ["services.cli", "http", "--http", f"127.0.0.1:{mesh_port}"], b.workdir / "http-bridge.log", env=procs.service_env(b.url)
    )
    base = procs.Child(["services.bench.raw_fronts", "http", b.url, str(raw_port)], b.workdir / "http-raw.log")
    raw_pool, mesh_pool = HttpPool("127.0.0.1", raw_port, concurrency), HttpPool("127.0.0.1", mesh_port, concurrency)
    path = "/agents/bench-echo/b"
    recorders = [b.watch(bridge, "http-bridge"), b.watch(base, "http-raw")]
    try:
        await base.wait_for_log("ready")
        raw_op = lambda i: raw_pool.post(path, ECHO)  # noqa: E731
        mesh_op = lambda i: mesh_pool.post(path, ECHO)  # noqa: E731
        same = orjson.loads(await _until_serving(raw_op, base)) == orjson.loads(await _until_serving(mesh_op, bridge))
        await drive(raw_op, 100, 8, b.progress, "http warm-up raw")
        await drive(mesh_op, 100, 8, b.progress, "http warm-up mesh")
        raw, mesh = await b.pair(raw_op, mesh_op, n, concurrency, f"http c={concurrency}", raw_pid=base.pid, mesh_pid=bridge.pid)
        base.check_alive()
        bridge.check_alive()
    finally:
        for recorder in recorders:
            b.unwatch(recorder)
        await asyncio.gather(raw_pool.close(), mesh_pool.close())
        bridge.stop()
        base.stop()
    met = mesh.ops_per_s >= 0.7 * raw.ops_per_s
    notes = {"same_reply": same, "agent": "bench-echo/b"}
    return [Result("http", f"POST c={concurrency}", "requests", raw, mesh, "ops/s >= 0.7 x raw", met, notes=notes)]


async def mail(b: Bench) -> list[Result]:
    """Mail accepted by `mesh smtp` (processing off) against a bare aiosmtpd handler that only stores it."""
    n, sessions = b.sizes.mail_ops, 8
    mesh_port, raw_port = free_port(), free_port()
    service = procs.Child(
        ["services.cli", "smtp", "--listen", f"127.0.0.1:{mesh_port}"],
        b.workdir / "smtp-mesh.log",
        env={**procs.service_env(b.url), "MESH_SMTP_PROCESS": "false", "MESH_SMTP_AGENT_TYPES": "bench-echo"},
    )
    base = procs.Child(["services.bench.raw_fronts", "smtp", b.url, str(raw_port)], b.workdir / "smtp-raw.log")
    raw_pool, mesh_pool = SmtpPool("127.0.0.1", raw_port, sessions), SmtpPool("127.0.0.1", mesh_port, sessions)
    message, ids = mail_message(b.run_id), itertools.count()  # a new Message-ID for every mail
    sender, rcpt = f"bench-{b.run_id}@bench.invalid", "bench-echo+b@localhost"
    js = b.nc.jetstream()
    recorders = [b.watch(service, "smtp-mesh"), b.watch(base, "smtp-raw")]
    try:
        await asyncio.gather(base.wait_for_log("ready"), service.wait_for_log("mail.started"))
        raw_op = lambda i: raw_pool.send(sender, rcpt, message(next(ids)))  # noqa: E731
        mesh_op = lambda i: mesh_pool.send(sender, rcpt, message(next(ids)))  # noqa: E731
        await drive(raw_op, 20, sessions, b.progress, "mail warm-up raw")
        first_seq = (await js.stream_info(subjects.MAIL_INBOUND_STREAM)).state.last_seq + 1
        await drive(mesh_op, 20, sessions, b.progress, "mail warm-up mesh")
        raw, mesh = await b.pair(
            raw_op, mesh_op, n, sessions, f"mail {sessions} sessions", raw_pid=base.pid, mesh_pid=service.pid
        )
        info = await js.stream_info(subjects.MAIL_INBOUND_STREAM)
        stored = info.state.last_seq - first_seq + 1
        base.check_alive()
        service.check_alive()
        if b.server_pid is None:  # a server that outlives the run: take the bench's mails back out
            await _delete_bench_mail(js, first_seq, info.state.last_seq, sender)
    finally:
        for recorder in recorders:
            b.unwatch(recorder)
        await asyncio.gather(raw_pool.close(), mesh_pool.close())
        service.stop()
        base.stop()
    notes = {"mesh_stored": stored, "expected_stored": mesh.ops + 20, "processing": "off", "sessions": sessions}
    target = "none in the issue: ratio reported"
    return [Result("mail", f"{sessions} SMTP sessions", "mails accepted", raw, mesh, target, None, notes=notes)]


async def _until_serving(op: Op, child: procs.Child, within: float = 30.0) -> bytes:
    """Retry `op(0)` until the child answers it (a port that is not yet listening refuses)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        child.check_alive()
        try:
            result: bytes = await op(0)
            return result
        except (OSError, ProtocolError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _delete_bench_mail(js: Any, first: int, last: int, sender: str) -> None:
    """Delete the mails this run left in `mesh_mail_in` (processing was off), and only those."""
    marker = f'"mail_from":"{sender}"'
    for seq in range(first, last + 1):
        try:
            msg = await js.get_msg(subjects.MAIL_INBOUND_STREAM, seq=seq)
            if marker in (msg.headers or {}).get(subjects.HEADER_MAIL_ENVELOPE, ""):
                await js.delete_msg(subjects.MAIL_INBOUND_STREAM, seq)
        except Exception:
            pass


SCENARIOS: dict[str, Callable[[Bench], Awaitable[list[Any]]]] = {
    "invoke": invoke,
    "turn": turn,
    "hot": hot,
    "activation": activation,
    "slow": slow,
    "http": http,
    "mail": mail,
    "durable": durable.durable,
    "failover": failover_scenario,
    "llm": llm.llm,
}

MAIN_APP = "services.bench.agents"  # its AGENTS; `activation` starts a worker of its own
