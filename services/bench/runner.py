"""Set up one bench run (server, stub model, baseline and worker processes), run the scenarios."""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mesh import bus, subjects
from mesh.bus import NatsServer
from mesh.client import MeshClient
from services.bench import procs
from services.bench.agents import MODEL_URL_ENV
from services.bench.load import Progress
from services.bench.names import RAW_BUCKET, RAW_MAIL_STREAM
from services.bench.raw import SUBJECT_PREFIX
from services.bench.scenarios import FULL, MAIN_APP, QUICK, SCENARIOS, Bench, scaled
from services.bench.stub_model import StubModel


@dataclass(frozen=True)
class BenchOptions:
    nats_url: str | None = None
    quick: bool = False
    only: Sequence[str] = ()
    progress: bool = True
    workdir: Path | None = None
    profile: Path | None = None
    scale: float = 1.0
    idle_timeout: float | None = None
    workers: int = 1


def select(only: Sequence[str]) -> list[str]:
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return [n for n in SCENARIOS if n in names] if names else list(SCENARIOS)


def _raise_fd_limit() -> None:
    """The slow scenario holds a socket per turn in flight; children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


async def _wait_raw_ready(nc: Any, raw: procs.Child, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        raw.check_alive()
        try:
            await nc.request(f"{SUBJECT_PREFIX}.echo", b"ping", timeout=0.5)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw responder did not answer:\n{raw.log_text()[-3000:]}") from None
            await asyncio.sleep(0.1)


BENCH_TYPES = ("bench-echo", "bench-turn", "bench-act", "bench-slow", "bench-fail", "bench-llm")


async def _clean_up(nc: Any) -> None:
    """On a server that outlives the run: drop the raw bucket and stream, and the bench agents' KV entries."""
    js = nc.jetstream()
    try:
        await js.delete_key_value(RAW_BUCKET)
    except Exception:
        pass
    try:
        await js.delete_stream(RAW_MAIL_STREAM)
    except Exception:
        pass
    for bucket in (subjects.STATE_BUCKET, subjects.DIRECTORY_BUCKET):
        for agent_type in BENCH_TYPES:
            try:
                await js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{agent_type}.>")
            except Exception:
                pass


async def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run the selected scenarios and return the report (what `--json` prints)."""
    names = select(options.only)
    sizes = scaled(QUICK if options.quick else FULL, options.scale)
    if options.idle_timeout is not None:
        sizes = replace(sizes, idle_timeout=options.idle_timeout)
    progress = Progress(enabled=options.progress)
    _raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        workdir = options.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        server = None
        url = options.nats_url
        if url is None:
            server = NatsServer(workdir / "nats-store")
            await server.start()
            url = server.url
        children: list[procs.Child] = []
        load_before = os.getloadavg()
        started = time.time()
        try:
            async with StubModel(delay=sizes.slow_delay) as model:
                nc = await bus.connect(bus.NatsOptions.from_url(url, name="mesh-bench"), reconnect=False)
                try:
                    progress.note(f"mesh bench: nats-server {url}; starting the raw responder and a mesh worker")
                    raw = procs.start_raw(url, model.url, workdir / "raw.log")
                    children.append(raw)
                    worker = await procs.start_worker(url, MAIN_APP, workdir / "worker.log", env={MODEL_URL_ENV: model.url})
                    children.append(worker)
                    await _wait_raw_ready(nc, raw)
                    if options.profile is not None:
                        options.profile.mkdir(parents=True, exist_ok=True)
                    bench = Bench(
                        url=url,
                        nc=nc,
                        client=MeshClient(nc, owner_cache=1 << 18),  # every instance of a scaled-up turn run
                        model=model,
                        sizes=sizes,
                        progress=progress,
                        run_id=os.urandom(3).hex(),
                        workdir=workdir,
                        profile_dir=options.profile,
                        raw_pid=raw.pid,
                        worker_pid=worker.pid,
                        server_pid=server.process.pid if server is not None and server.process else None,
                        workers=options.workers,
                    )
                    bench.watch(worker, "worker")
                    bench.watch(raw, "raw")
                    if options.profile is not None:
                        from services.bench.profile import Recorder

                        bench.recorders.append(Recorder(os.getpid(), options.profile / "bench.txt"))
                    results: list[dict[str, Any]] = []
                    try:
                        for name in names:
                            progress.note(f"{name}:")
                            for result in await SCENARIOS[name](bench):
                                results.append(result.as_dict())
                            for child in children:
                                child.check_alive()
                    finally:
                        bench.stop_recorders()
                finally:
                    for child in reversed(children):
                        child.stop()
                    if options.nats_url is not None:
                        await _clean_up(nc)
                    await nc.drain()
        finally:
            for child in reversed(children):
                child.stop()
            if server is not None:
                server.stop()
    return {
        "nats_url": options.nats_url or "embedded",
        "quick": options.quick,
        "scale": options.scale,
        "workers": options.workers,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "duration_s": round(time.time() - started, 1),
        "results": results,
    }


def render_table(report: dict[str, Any]) -> str:
    """The human-readable report: one row per scenario case."""
    lines = [
        f"mesh bench ({'quick' if report['quick'] else 'full'} x{report['scale']:g}; "
        + (f"--workers {report['workers']}; " if report.get("workers", 1) > 1 else "")
        + f"{report['cpus']} CPUs; load average "
        f"{report['loadavg_before'][0]} before, {report['loadavg_after'][0]} after; {report['duration_s']}s)",
        "",
        f"{'scenario':<11} {'case':<28} {'raw ops/s':>10} {'mesh ops/s':>11} {'ratio':>6}  "
        f"{'raw p50/p99 ms':>15} {'mesh p50/p99 ms':>16}  target",
    ]
    for r in report["results"]:
        if "skipped" in r:
            lines.append(f"{r['scenario']:<11} skipped: {r['skipped']}")
            continue
        raw, mesh = r["raw"], r["mesh"]
        verdict = {True: "met", False: "NOT met", None: ""}[r["met"]]
        if raw["ops"] or raw["errors"]:
            raw_cols = (
                f"{raw['ops_per_s']:>10,.0f} {mesh['ops_per_s']:>11,.0f} {r['ratio']:>6.2f}  "
                f"{raw['p50_ms']:>7.2f}/{raw['p99_ms']:<7.2f}"
            )
        else:  # no raw baseline for this case (failover): its columns stay empty
            raw_cols = f"{'-':>10} {mesh['ops_per_s']:>11,.0f} {'-':>6}  {'-':>15}"
        lines.append(
            f"{r['scenario']:<11} {r['case']:<28} {raw_cols} {mesh['p50_ms']:>7.2f}/{mesh['p99_ms']:<8.2f}"
            f"  {r['target']}" + (f" ({verdict})" if verdict else "")
        )
        extras = {**r.get("notes", {}), **_extras(raw, "raw"), **_extras(mesh, "mesh")}
        extras.update({f"{side}_errors": r[side]["errors"] for side in ("raw", "mesh") if r[side]["errors"]})
        if extras:
            lines.append(" " * 12 + ", ".join(f"{k}={v}" for k, v in extras.items()))
        if "responder_cpu_us_per_op" in mesh:
            lines.append(
                " " * 12
                + "CPU us/op caller/responder/server: "
                + "  ".join(
                    f"{side} " + "/".join(f"{r[side].get(f'{role}_cpu_us_per_op', '-')}" for role in CPU_ROLES)
                    for side in ("raw", "mesh")
                )
            )
        for side in ("raw", "mesh"):
            if r[side].get("first_error"):
                lines.append(" " * 12 + f"{side} first error: {r[side]['first_error'][:200]}")
    return "\n".join(lines)


CPU_ROLES = ("caller", "responder", "server")


def _extras(measure: dict[str, Any], side: str) -> dict[str, Any]:
    standard = {"ops", "errors", "wall_s", "ops_per_s", "p50_ms", "p99_ms", "first_error"}
    standard |= {f"{role}_cpu_us_per_op" for role in CPU_ROLES}
    return {f"{side}_{k}": v for k, v in measure.items() if k not in standard}
