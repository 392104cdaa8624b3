"""Load loops: run N operations at concurrency c and measure throughput and latency."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

Op = Callable[[int], Awaitable[Any]]


@dataclass
class Measure:
    """One side (raw or mesh) of one scenario."""

    ops: int
    errors: int
    wall_s: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    first_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list, repr=False)  # sorted, seconds

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        del data["latencies"]
        if data["first_error"] is None:
            del data["first_error"]
        return {**data, **extra}


def merge(parts: list[Measure]) -> Measure:
    """One measure of several rounds of the same case: ops and time add up, latencies pool,
    CPU per op is weighted by each round's ops."""
    if len(parts) == 1:
        return parts[0]
    ops = sum(p.ops for p in parts)
    wall = sum(p.wall_s for p in parts)
    latencies = sorted(x for p in parts for x in p.latencies)
    total = sum(p.ops + p.errors for p in parts)
    extra: dict[str, Any] = {}
    for key in parts[0].extra:
        if key.endswith("_cpu_us_per_op"):
            weighted = sum(p.extra.get(key, 0.0) * (p.ops + p.errors) for p in parts)
            extra[key] = round(weighted / total, 1) if total else 0.0
    return Measure(
        ops=ops,
        errors=sum(p.errors for p in parts),
        wall_s=round(wall, 4),
        ops_per_s=round(ops / wall, 1) if wall > 0 else 0.0,
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        first_error=next((p.first_error for p in parts if p.first_error), None),
        extra=extra,
        latencies=latencies,
    )


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


class Progress:
    """One status line on stderr while a phase runs (redrawn in place on a terminal)."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.label = ""
        self.total = 0
        self.done = 0
        self.started = 0.0
        self._task: asyncio.Task[None] | None = None

    def note(self, text: str) -> None:
        if self.enabled:
            self._clear()
            print(text, file=self.stream, flush=True)

    async def __call__(self, label: str, total: int, run: Callable[[], Awaitable[Any]]) -> Any:
        self.label, self.total, self.done, self.started = label, total, 0, time.perf_counter()
        if self.enabled and self.tty:
            self._task = asyncio.get_running_loop().create_task(self._redraw())
        try:
            return await run()
        finally:
            if self._task is not None:
                self._task.cancel()
                self._task = None
            if self.enabled:
                self._clear()
                elapsed = time.perf_counter() - self.started
                print(f"  {label}: {self.done}/{total} in {elapsed:.2f}s", file=self.stream, flush=True)

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        return f"  {self.label}: {self.done}/{self.total} ({rate:,.0f}/s, {elapsed:.1f}s)"

    def _clear(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    async def _redraw(self) -> None:
        while True:
            self.stream.write("\r\x1b[K" + self._line())
            self.stream.flush()
            await asyncio.sleep(0.2)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (Linux); 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

CpuProbes = dict[str, Callable[[], float]]


async def drive(
    op: Op,
    total: int,
    concurrency: int,
    progress: Progress,
    label: str,
    *,
    cpu: CpuProbes | None = None,
    offset: int = 0,
) -> Measure:
    """Run `op(offset) .. op(offset + total - 1)` from `concurrency` loops; time each call.

    `cpu` maps a role ("caller", "responder", "server") to a CPU-seconds probe: the measure then
    says how many CPU microseconds each process spent per operation, a figure that other load on
    the machine disturbs far less than ops/s.
    """
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    cursor = offset
    end = offset + total
    clock = time.perf_counter

    async def loop() -> None:
        nonlocal cursor, errors, first_error
        while cursor < end:
            i = cursor
            cursor += 1
            t0 = clock()
            try:
                await op(i)
            except Exception as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
            else:
                latencies.append(clock() - t0)
            progress.done += 1

    async def run() -> float:
        started = clock()
        await asyncio.gather(*(loop() for _ in range(min(concurrency, total))))
        return clock() - started

    cpu_before = {role: probe() for role, probe in (cpu or {}).items()}
    wall = await progress(label, total, run)
    cpu_used = {role: probe() - cpu_before[role] for role, probe in (cpu or {}).items()}
    latencies.sort()
    extra = {f"{role}_cpu_us_per_op": round(used / total * 1e6, 1) for role, used in cpu_used.items() if total}
    return Measure(
        ops=len(latencies),
        errors=errors,
        wall_s=round(wall, 4),
        ops_per_s=round(len(latencies) / wall, 1) if wall > 0 else 0.0,
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        first_error=first_error,
        extra=extra,
        latencies=latencies,
    )
