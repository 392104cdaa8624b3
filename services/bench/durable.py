"""The `durable` scenario: durable messages applied per second, the mesh against a hand-written consumer.

Both sides store every message first, then apply it exactly once, in per-instance order, to a
counter persisted in JetStream KV. Every instance first gets one message, untimed (first touches
are the activation scenario's business). Then a case publishes its messages at concurrency 64 (each
instance's messages in sequence order: one connection stores them in the order it sends them) and
is timed from the first publish until the last message is applied, which the bench learns from the
streams: both are work queues, where a message is removed once acked, and both sides ack a message
only after its KV write.
Then the final state of every instance is read back: `n` messages applied, the last sequence seen,
and how many arrived out of order.

Raw side (this module run as a process: `python -m services.bench.durable NATS_URL`): what a
careful nats-py user writes. A work-queue stream `mesh_bench_raw_durable` on `_bench.rawd.<key>`, a
durable pull consumer (explicit ack, max_ack_pending 1,024) fetched in batches of up to 256; each
batch is split by key, keys run concurrently, each key's messages one after another: kv.get, then
kv.create or kv.update(last=revision), then ack.

Mesh side: `MeshClient.send_durable` to `bench-durable/<name>`, delivered by its own worker
(`services.bench.agents:DURABLE_AGENTS`). With `--workers N`, N such workers and N raw consumer
processes (on the one raw consumer), and the responder CPU is summed over each side's N.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.js.errors as jse
import orjson
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from mesh import subjects
from mesh.delivery import consumer_name
from services.bench import names, procs
from services.bench.load import Measure, drive, merge, percentile, process_cpu

STREAM = "mesh_bench_raw_durable"
SUBJECT = "_bench.rawd"
CONSUMER = "raw"
AGENT = "bench-durable"
KEY_PREFIX = "d."
BATCH = 256
CONCURRENCY = 64
ROUNDS = 2


# -- the raw consumer process ------------------------------------------------------------------


async def _apply(kv: KeyValue, key: str, msgs: list[Msg]) -> None:
    """One key's messages of a batch, in order: get, create or update(last=rev), ack. A write that
    lost a race (another raw process wrote the key: --workers) naks the key's rest, to come again."""
    for i, msg in enumerate(msgs):
        try:
            await _apply_one(kv, key, msg)
        except jse.KeyWrongLastSequenceError:
            for later in msgs[i:]:
                await later.nak()
            return


async def _apply_one(kv: KeyValue, key: str, msg: Msg) -> None:
    seq = orjson.loads(msg.data)["seq"]
    try:
        entry = await kv.get(key)
    except jse.KeyNotFoundError:
        entry = None
    if entry is None or entry.value is None:
        state = {"n": 1, "last": seq, "out_of_order": int(seq != 1)}
        await kv.create(key, orjson.dumps(state))
    else:
        state = orjson.loads(entry.value)
        state["out_of_order"] += int(seq != state["last"] + 1)
        state["n"] += 1
        state["last"] = seq
        await kv.update(key, orjson.dumps(state), last=entry.revision)
    await msg.ack()


async def serve(url: str) -> None:
    nc = await nats.connect(url, name="mesh-bench-raw-durable")
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket=names.RAW_BUCKET, history=1, storage=StorageType.FILE, direct=True))
    await _ensure_raw_stream(js)
    sub = await js.pull_subscribe_bind(durable=CONSUMER, stream=STREAM)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(BATCH, timeout=0.5)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        by_key: dict[str, list[Msg]] = {}
        for msg in msgs:
            by_key.setdefault(KEY_PREFIX + msg.subject.rsplit(".", 1)[1], []).append(msg)
        await asyncio.gather(*(_apply(kv, key, group) for key, group in by_key.items()))
    await nc.drain()


async def _ensure_raw_stream(js: Any) -> None:
    config = StreamConfig(name=STREAM, subjects=[f"{SUBJECT}.*"], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE)
    try:
        await js.add_stream(config)
    except jse.BadRequestError:
        pass
    await js.add_consumer(
        STREAM, ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1024, ack_wait=30.0)
    )


# -- the scenario ------------------------------------------------------------------------------


async def durable(b: Any) -> list[Any]:
    from services.bench.scenarios import Result

    js = b.nc.jetstream()
    await _ensure_raw_stream(js)
    n = max(1, getattr(b, "workers", 1))  # --workers: N mesh workers and N raw consumers
    raw_procs = [procs.Child(["services.bench.durable", b.url], b.workdir / f"raw-durable-{i + 1}.log") for i in range(n)]
    workers: list[procs.Child] = []
    recorders = [b.watch(raw, f"raw-durable-{i + 1}") for i, raw in enumerate(raw_procs)]
    results = []
    try:
        for i in range(n):
            log = b.workdir / f"worker-durable-{i + 1}.log"
            workers.append(await procs.start_worker(b.url, "services.bench.agents:DURABLE_AGENTS", log))
            recorders.append(b.watch(workers[-1], f"worker-durable-{i + 1}"))
        await asyncio.gather(*(c.wait_for_log("ready") for c in raw_procs), *(w.wait_for_log("durable.started") for w in workers))
        raw_kv = await js.key_value(names.RAW_BUCKET)
        raw_pids, worker_pids = [c.pid for c in raw_procs], [w.pid for w in workers]
        for case, instances, total in (
            (f"{b.sizes.durable_instances} instances", b.sizes.durable_instances, b.sizes.durable_msgs),
            ("1 instance", 1, b.sizes.durable_hot_msgs),
        ):
            prefix = f"{b.run_id}-{instances}-"
            sides = {"raw": _Sent("raw", prefix, instances, raw_pids), "mesh": _Sent("mesh", prefix, instances, worker_pids)}
            for side in sides.values():  # first touches are the activation scenario's business: untimed
                await _side(b, side, f"durable {case} create", instances)
            raws: list[Measure] = []
            meshes: list[Measure] = []
            for r in range(ROUNDS):
                count = total // ROUNDS + (1 if r < total % ROUNDS else 0)
                label = f"durable {case} ({r + 1}/{ROUNDS})"
                raws.append(await _side(b, sides["raw"], label, count))
                meshes.append(await _side(b, sides["mesh"], label, count))
            raw, mesh = merge(raws), merge(meshes)
            checks = {"raw": _Check(), "mesh": _Check()}
            for name, side in sides.items():
                if name == "raw":
                    states = {key: await _raw_state(raw_kv, key) for key in side.sent}
                else:
                    states = {key: await b.client.state(AGENT, key) for key in side.sent}
                checks[name].add(side.sent, states)
            if instances == 1:
                target = "mesh >= 2.0 x raw and >= 3,000 applied/s, order kept"
                met = mesh.ops_per_s >= 2.0 * raw.ops_per_s and mesh.ops_per_s >= 3000
            else:
                target = "mesh >= 1.0 x raw and >= 5,000 applied/s"
                met = mesh.ops_per_s >= raw.ops_per_s and mesh.ops_per_s >= 5000
            met = met and checks["mesh"].exact and checks["mesh"].ordered
            notes = {f"{side}_{k}": v for side, check in checks.items() for k, v in check.notes().items()}
            if n > 1:
                notes["workers"] = n
            results.append(Result("durable", case, "messages applied", raw, mesh, target, met, notes=notes))
        for child in (*raw_procs, *workers):
            child.check_alive()
    finally:
        for recorder in recorders:
            b.unwatch(recorder)
        for child in (*workers, *raw_procs):
            child.stop()
        await _clean_up(b, js)
    return results


class _Check:
    """What the final states of one side said over every round: exactly once, in order."""

    def __init__(self) -> None:
        self.expected = 0
        self.applied = 0
        self.instances_wrong = 0
        self.out_of_order = 0

    @property
    def exact(self) -> bool:
        return self.applied == self.expected and self.instances_wrong == 0

    @property
    def ordered(self) -> bool:
        return self.out_of_order == 0

    def notes(self) -> dict[str, Any]:
        return {"exactly_once": self.exact, "order_kept": self.ordered, "applied": self.applied, "expected": self.expected}

    def add(self, expected: dict[str, int], states: dict[str, dict[str, int] | None]) -> None:
        for name, count in expected.items():
            state = states.get(name) or {"n": 0, "last": 0, "out_of_order": 0}
            self.expected += count
            self.applied += state["n"]
            self.out_of_order += state["out_of_order"]
            self.instances_wrong += int(state["n"] != count or state["last"] != count)


class _Sent:
    """One side of a case: its instances, and how many messages each was sent so far."""

    def __init__(self, side: str, prefix: str, instances: int, pids: list[int]) -> None:
        self.side = side
        self.prefix = prefix
        self.instances = instances
        self.pids = pids
        self.sent: dict[str, int] = {}


async def _side(b: Any, sent_to: _Sent, label: str, total: int) -> Measure:
    """Publish `total` messages over the side's instances at concurrency 64, wait until all are applied."""
    js = b.nc.jetstream()
    side, prefix, instances, pids, sent = sent_to.side, sent_to.prefix, sent_to.instances, sent_to.pids, sent_to.sent

    def next_seq(i: int) -> tuple[str, bytes]:
        name = f"{prefix}{i % instances}"
        seq = sent[name] = sent.get(name, 0) + 1  # in call order: one connection stores in send order
        return name, orjson.dumps({"seq": seq})

    async def raw_op(i: int) -> None:
        name, data = next_seq(i)
        await js.publish(f"{SUBJECT}.{name}", data)

    async def mesh_op(i: int) -> None:
        name, data = next_seq(i)
        await b.client.send_durable(AGENT, name, data)

    op, drained = (raw_op, _raw_drained) if side == "raw" else (mesh_op, _mesh_drained)
    probes: dict[str, Callable[[], float]] = {
        "caller": time.process_time,
        "responder": lambda: sum(process_cpu(pid) for pid in pids),  # summed over --workers processes
    }
    if b.server_pid is not None:
        probes["server"] = lambda: process_cpu(b.server_pid)
    before = {role: probe() for role, probe in probes.items()}
    started = time.perf_counter()
    published = await drive(op, total, CONCURRENCY, b.progress, f"{label} {side} publish")
    await _until(lambda: drained(js), within=120.0)
    wall = time.perf_counter() - started
    cpu = {f"{role}_cpu_us_per_op": round((probe() - before[role]) / total * 1e6, 1) for role, probe in probes.items()}
    applied = published.ops  # each acked after its write, and the streams are empty: all applied
    lat = published.latencies
    return Measure(
        ops=applied,
        errors=published.errors,
        wall_s=round(wall, 4),
        ops_per_s=round(applied / wall, 1) if wall > 0 else 0.0,
        p50_ms=round(percentile(lat, 0.50) * 1000, 3),
        p99_ms=round(percentile(lat, 0.99) * 1000, 3),
        first_error=published.first_error,
        extra={**cpu, "stored_per_s": published.ops_per_s},
        latencies=lat,
    )


async def _raw_state(kv: KeyValue, name: str) -> dict[str, int] | None:
    try:
        entry = await kv.get(KEY_PREFIX + name)
    except jse.KeyNotFoundError:
        return None
    return orjson.loads(entry.value) if entry.value else None


async def _raw_drained(js: Any) -> bool:
    """Both streams are work queues: a message leaves its stream when it is acked, after its write."""
    info = await js.stream_info(STREAM)
    return bool(info.state.messages == 0)


async def _mesh_drained(js: Any) -> bool:
    info = await js.stream_info(subjects.DURABLE_STREAM, subjects_filter=f"durable.{AGENT}.>")
    return not info.state.subjects


async def _until(probe: Callable[[], Awaitable[bool]], within: float) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"durable messages still unapplied after {within:g}s")
        await asyncio.sleep(0.01)


async def _clean_up(b: Any, js: Any) -> None:
    """Drop the raw stream; on a server that outlives the run, also the mesh side's consumers and state."""
    try:
        await js.delete_stream(STREAM)
    except Exception:
        pass
    if b.server_pid is not None:
        return
    for p in range(subjects.DURABLE_PARTITIONS):
        try:
            await js.delete_consumer(subjects.DURABLE_STREAM, consumer_name(AGENT, p))
        except Exception:
            pass
    for bucket in (subjects.STATE_BUCKET, subjects.DIRECTORY_BUCKET):
        try:
            await js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{AGENT}.>")
        except Exception:
            pass


def main(argv: list[str]) -> int:
    asyncio.run(serve(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
