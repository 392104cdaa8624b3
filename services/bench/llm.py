"""The `llm` scenario: the triage demo on the mesh against the plain Agents SDK in one process.

Each conversation is two user messages, each answered through a handoff (a capital for the
History Tutor, then a product for the Math Tutor), with the conversation kept in memory, on the
offline demo model. The mesh side is `mesh worker` processes serving `BenchTriage` (the triage
demo under a bench type), called with `MeshClient` from the bench process. The plain side is what
a user writes without the mesh: one process holding the same SDK agents, running
`Runner.run(agent, text, session=SQLiteSession(conversation, "conversations.db"))` per message,
reached by a minimal nats-py responder (`python -m services.bench.llm URL DB`) so that both sides
pay the same caller and transport. Both sides' final outputs are compared, conversation by
conversation.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from mesh import subjects
from services.bench import procs
from services.bench.load import Measure, Progress, drive, merge, percentile, process_cpu
from services.bench.raw import SUBJECT_PREFIX
from services.triage import CAPITALS, Triage

if TYPE_CHECKING:
    from services.bench.scenarios import Bench, Result

AGENT_TYPE = "bench-llm"
APP = "services.bench.llm:AGENTS"
PLAIN_SUBJECT = f"{SUBJECT_PREFIX}.llm"
CONCURRENCY = 64
MESSAGES = 2
TARGET = 1.5
WARM_UP = 1_000_000  # the first conversation index of the warm-up, past any measured one
WORKERS_ENV = "MESH_BENCH_LLM_WORKERS"
NO_MODEL_ENV = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "MESH_MODEL": "", "MESH_DEMO_MCP_URL": "off"}
_COUNTRIES = sorted(CAPITALS)


class BenchTriage(Triage):
    """The triage demo under its own type, so that the bench's clean-up finds what it wrote."""

    type = AGENT_TYPE


AGENTS = [BenchTriage]


def questions(conversation: int) -> tuple[str, str]:
    """The two user messages of one conversation: a capital (History Tutor), then a product (Math Tutor)."""
    country = _COUNTRIES[conversation % len(_COUNTRIES)].title()
    return f"What is the capital of {country}?", f"What is {conversation % 97 + 2} * {conversation % 13 + 3}?"


Answer = tuple[str, Any]
Ask = Callable[[int, str], Awaitable[Answer]]


async def llm(b: Bench) -> list[Result]:
    from services.bench.scenarios import ROUNDS, Result

    total = b.sizes.llm_conversations
    workers = int(os.environ.get(WORKERS_ENV, "2"))
    db = b.workdir / "llm-plain" / "conversations.db"
    db.parent.mkdir(exist_ok=True)
    plain = procs.Child(["services.bench.llm", b.url, str(db)], b.workdir / "llm-plain.log", env=NO_MODEL_ENV)
    children = [plain]
    recorders = [b.watch(plain, "llm-plain")]
    answers: dict[str, dict[int, list[Answer]]] = {"raw": {}, "mesh": {}}
    try:
        env = {"NATS_URL": b.url, "MESH_LOG_FORMAT": "json", "MESH_LOG_LEVEL": "info", "MESH_IDLE_TIMEOUT": "600", **NO_MODEL_ENV}
        for w in range(workers):  # started together: each takes seconds to import
            child = procs.Child(["services.cli", "worker", "--app", APP], b.workdir / f"worker-llm-{w}.log", env=env)
            children.append(child)
            recorders.append(b.watch(child, f"worker-llm-{w}"))
        await asyncio.gather(plain.wait_for_log("ready", within=60), *(c.wait_for_log("worker.started") for c in children[1:]))

        async def ask_plain(conversation: int, text: str) -> Answer:
            body = orjson.dumps({"conversation": f"c{b.run_id}-{conversation}", "text": text})
            reply = orjson.loads(await b.raw("llm", body, timeout=120))
            return reply["agent"], reply["output"]

        async def ask_mesh(conversation: int, text: str) -> Answer:
            reply = await b.client.call(AGENT_TYPE, f"l{b.run_id}-{conversation}", text, timeout=120)
            return reply["agent"], reply["output"]

        # Warm-up on conversations outside the measured ones (the SDK's import and first runs in
        # every process), both sides at once: it is not measured, and the imports take seconds.
        warm, started = min(CONCURRENCY, total), time.perf_counter()
        quiet = Progress(enabled=False)
        await asyncio.gather(
            *(drive(_conversations(ask, {}, []), warm, CONCURRENCY, quiet, "", offset=WARM_UP) for ask in (ask_plain, ask_mesh))
        )
        b.progress.note(f"  llm warm-up, both sides: {warm} conversations in {time.perf_counter() - started:.2f}s")
        mesh_pids = [c.pid for c in children[1:]]
        rounds = max(1, min(ROUNDS, total // 100))
        parts: dict[str, list[Measure]] = {"raw": [], "mesh": []}
        start = 0
        for r in range(rounds):
            count = total // rounds + (1 if r < total % rounds else 0)
            tag = f" ({r + 1}/{rounds})" if rounds > 1 else ""
            for side, ask, pids in (("raw", ask_plain, [plain.pid]), ("mesh", ask_mesh, mesh_pids)):
                latencies: list[float] = []
                label = f"llm {count} conversations x {MESSAGES} c={CONCURRENCY} {side}{tag}"
                measure = await _drive(b, _conversations(ask, answers[side], latencies), count, label, pids, start)
                parts[side].append(_per_message(measure, latencies))
            start += count
        for child in children:
            child.check_alive()
    finally:
        for recorder in recorders:
            b.unwatch(recorder)
        for child in children:
            child.stop()
    if b.server_pid is None:  # a server that outlives the run: drop the conversations the mesh side stored
        await _forget_conversations(b)
    raw, mesh = merge(parts["raw"]), merge(parts["mesh"])
    mismatches = sum(1 for i, got in answers["raw"].items() if answers["mesh"].get(i) != got)
    mismatches += len(answers["mesh"].keys() - answers["raw"].keys())
    notes = {
        "conversations": total,
        "messages_per_conversation": MESSAGES,
        "mesh_workers": workers,
        "answer_mismatches": mismatches,
        "compared_conversations": len(answers["raw"]),
        "sample_answer": answers["mesh"].get(0),
    }
    met = mesh.ops_per_s >= TARGET * raw.ops_per_s and mismatches == 0 and mesh.errors == 0
    target = f">= {TARGET:g} x plain openai-agents + SQLiteSession, same answers"
    case = f"{total} conv x {MESSAGES} c={CONCURRENCY}"
    return [Result("llm", case, "messages", raw, mesh, target, met, notes=notes)]


def _conversations(ask: Ask, answers: dict[int, list[Answer]], latencies: list[float]) -> Callable[[int], Awaitable[None]]:
    """An operation per conversation: its messages one after the other (memory needs the order)."""
    clock = time.perf_counter

    async def conversation(i: int) -> None:
        got: list[Answer] = []
        for text in questions(i):
            t0 = clock()
            got.append(await ask(i, text))
            latencies.append(clock() - t0)
        answers[i] = got

    return conversation


async def _drive(b: Bench, op: Callable[[int], Awaitable[None]], total: int, label: str, pids: list[int], offset: int) -> Measure:
    """`Bench.drive` with the responder's CPU summed over `pids` (the mesh side may have several workers)."""
    cpu: dict[str, Callable[[], float]] = {
        "caller": time.process_time,
        "responder": lambda: sum(process_cpu(pid) for pid in pids),
    }
    if b.server_pid is not None:
        server = b.server_pid
        cpu["server"] = lambda: process_cpu(server)
    return await drive(op, total, CONCURRENCY, b.progress, label, cpu=cpu, offset=offset)


def _per_message(measure: Measure, latencies: list[float]) -> Measure:
    """A per-conversation measure restated per message: counts, rates, CPU and latencies."""
    latencies.sort()
    extra = {k: round(v / MESSAGES, 1) if k.endswith("_cpu_us_per_op") else v for k, v in measure.extra.items()}
    ops = len(latencies)
    return replace(
        measure,
        ops=ops,
        errors=measure.errors * MESSAGES,
        ops_per_s=round(ops / measure.wall_s, 1) if measure.wall_s > 0 else 0.0,
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        extra=extra,
        latencies=latencies,
    )


async def _forget_conversations(b: Bench) -> None:
    js = b.nc.jetstream()
    try:
        await js.purge_stream(subjects.MEMORY_STREAM, subject=f"{subjects.MEMORY_STREAM}.{AGENT_TYPE}.>")
    except Exception:
        pass


# -- the plain side: openai-agents with SQLiteSession in one process ----------------------------


async def serve_plain(url: str, db: str) -> None:
    """Answer each request on `PLAIN_SUBJECT` with `Runner.run` over the conversation's `SQLiteSession`
    (a task per request, as a web app's handler would be); the SDK's tracing is left as it is by default."""
    from agents import Runner, SQLiteSession

    from mesh import bus
    from mesh.models import OfflineModel
    from services.triage import triage_agents

    agent = triage_agents(functools.cache(OfflineModel))
    nc = await bus.connect(bus.NatsOptions.from_url(url, name="mesh-bench-llm-plain"), reconnect=False)
    tasks: set[asyncio.Task[None]] = set()

    async def answer(msg: Any) -> None:
        try:
            request = orjson.loads(msg.data)
            session = SQLiteSession(request["conversation"], db)
            try:
                result = await Runner.run(agent, request["text"], session=session)
            finally:
                session.close()
            reply = {"agent": result.last_agent.name, "output": result.final_output}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        await msg.respond(orjson.dumps(reply))

    async def handle(msg: Any) -> None:
        task = asyncio.get_running_loop().create_task(answer(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await nc.subscribe(PLAIN_SUBJECT, cb=handle)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import logging

    logging.getLogger("openai.agents").setLevel(logging.ERROR)  # "OPENAI_API_KEY is not set, skipping trace export"
    asyncio.run(serve_plain(sys.argv[1], sys.argv[2]))
