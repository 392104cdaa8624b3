"""Prometheus metrics of a mesh process: one registry, the metric objects, and the runtime observer.

Every metric of the library is defined here, in the one registry a process serves on `/metrics`.
The runtime's own metrics are fed by `MetricsObserver` (turns and state writes) and
`RuntimeCollector` (instances held, read when scraped); the others are incremented where the event
happens (durable delivery, approvals, the flight recorder). The apps register theirs in the same
`REGISTRY`, next to the code that counts them (`services/http/metrics.py`, `services/mail/metrics.py`).

Label values are agent types, outcomes and status codes: small, bounded sets. Instance names never
become labels (they are unbounded and may be personal data).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh.observe import StateRecord, TurnRecord

if TYPE_CHECKING:
    from mesh.runtime import Runtime

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# Turn latency: agent turns range from sub-millisecond (counters) to minutes (LLM runs).
TURN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
SIZE_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 524288, 1048576, 4194304)

# -- the runtime (fed by MetricsObserver, collected by TurnMetrics when scraped) -----------------
EVENTS_DROPPED = Counter(
    "mesh_recorder_dropped_events",
    "Flight-recorder events dropped because the buffer was full or NATS down.",
    registry=REGISTRY,
)

# -- durable delivery and approvals (incremented where the event happens) ---------------------------
APPROVALS_PENDING = Gauge(
    "mesh_approvals_pending",
    "Tool calls waiting for a human decision, by agent type.",
    ["type"],
    registry=REGISTRY,
)
DURABLE_BACKLOG = Gauge(
    "mesh_durable_backlog",
    "Durable messages waiting for delivery, by agent type, as this worker last saw them.",
    ["type"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "mesh_dead_letters",
    "Durable messages moved to the dead-letter stream, by agent type.",
    ["type"],
    registry=REGISTRY,
)


def render() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)


def _go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it (`0.5`, `1.0`)."""
    return repr(float(value))


class _Histogram:
    """Bucket counts and a sum: what a Prometheus histogram needs, at the cost of one bisect."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*(_go_float(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            found.append((bound, total))
        return found


class TurnMetrics(Collector):
    """Turns and state writes, counted in plain dicts on the turn path and turned into metric
    families only when scraped: a prometheus-client child costs a lock and a lookup per increment,
    several microseconds on a path that takes tens."""

    def __init__(self) -> None:
        self.turns: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.turn_seconds: defaultdict[str, _Histogram] = defaultdict(lambda: _Histogram(TURN_BUCKETS))
        self.writes: defaultdict[str, int] = defaultdict(int)
        self.state_bytes: defaultdict[str, _Histogram] = defaultdict(lambda: _Histogram(SIZE_BUCKETS))

    def collect(self) -> Iterator[Metric]:
        turns = CounterMetricFamily(
            "mesh_turns",
            "Turns run by this process, by agent type and outcome (ok or the error code).",
            labels=["type", "outcome"],
        )
        for labels, count in list(self.turns.items()):
            turns.add_metric(list(labels), count)
        yield turns
        yield _histogram_family(
            "mesh_turn_duration_seconds", "Time from the start to the end of a turn's handler.", self.turn_seconds
        )
        writes = CounterMetricFamily(
            "mesh_state_writes", "State writes (one per batch of turns that changed state).", labels=["type"]
        )
        for agent_type, count in list(self.writes.items()):
            writes.add_metric([agent_type], count)
        yield writes
        yield _histogram_family("mesh_state_size_bytes", "Size of each state written, in bytes.", self.state_bytes)


def _histogram_family(name: str, documentation: str, by_type: dict[str, _Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["type"])
    for agent_type, histogram in list(by_type.items()):
        family.add_metric([agent_type], histogram.cumulative(), histogram.sum)
    return family


TURN_METRICS = TurnMetrics()
REGISTRY.register(TURN_METRICS)


class MetricsObserver:
    """Counts turns and state writes as the runtime reports them (no I/O: a few dict operations)."""

    def __init__(self, metrics: TurnMetrics = TURN_METRICS) -> None:
        self.metrics = metrics

    def on_turn(self, record: TurnRecord) -> None:
        self.metrics.turns[record.agent_type, record.outcome] += 1
        self.metrics.turn_seconds[record.agent_type].observe(max(0.0, record.ended_at - record.started_at))

    def on_state_saved(self, record: StateRecord) -> None:
        self.metrics.writes[record.agent_type] += 1
        self.metrics.state_bytes[record.agent_type].observe(record.size)


class RuntimeCollector(Collector):
    """Instances a runtime holds, read at scrape time; register with `REGISTRY.register(...)`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        stats = self.runtime.statistics()
        activations = GaugeMetricFamily("mesh_activations", "Instances this worker has in memory.")
        activations.add_metric([], stats["activations"])
        owned = GaugeMetricFamily("mesh_instances_owned", "Instances this worker owns (runs the turns of).")
        owned.add_metric([], stats["owned"])
        forwarded = CounterMetricFamily(
            "mesh_requests_forwarded_in",
            "Requests that reached this worker forwarded by another worker (not sent to the owner directly).",
            labels=["agent_type"],
        )
        for agent_type, counts in stats["types"].items():
            forwarded.add_metric([agent_type], counts["forwarded_in"])
        yield activations
        yield owned
        yield forwarded

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
