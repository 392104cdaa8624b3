"""Prometheus metrics of a mesh process: one registry, the metric objects, and the runtime observer.

Every metric a mesh process can expose is defined here, so a dashboard can be written against one
list. The runtime's own metrics are fed by `MetricsObserver` (turns and state writes) and
`RuntimeCollector` (instances held, read when scraped). The others are incremented by the services
that own the events they count (the HTTP bridge, the mail service, durable delivery, approvals).

Label values are agent types, outcomes and status codes: small, bounded sets. Instance names never
become labels (they are unbounded and may be personal data).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
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

# -- the runtime (fed by MetricsObserver) ---------------------------------------------------------
TURNS = Counter(
    "mesh_turns", "Turns run by this process, by agent type and outcome (ok or the error code).",
    ["type", "outcome"], registry=REGISTRY,
)
TURN_SECONDS = Histogram(
    "mesh_turn_duration_seconds", "Time from the start to the end of a turn's handler.",
    ["type"], buckets=TURN_BUCKETS, registry=REGISTRY,
)
STATE_WRITES = Counter(
    "mesh_state_writes", "State writes (one per batch of turns that changed state).", ["type"], registry=REGISTRY
)
STATE_BYTES = Histogram(
    "mesh_state_size_bytes", "Size of each state written, in bytes.", ["type"], buckets=SIZE_BUCKETS,
    registry=REGISTRY,
)
EVENTS_DROPPED = Counter(
    "mesh_recorder_dropped_events", "Flight-recorder events dropped because the buffer was full or NATS down.",
    registry=REGISTRY,
)

# -- other services (defined here, incremented where the event happens) ---------------------------
APPROVALS_PENDING = Gauge(
    "mesh_approvals_pending", "Tool calls waiting for a human decision, by agent type.", ["type"], registry=REGISTRY,
)
DURABLE_BACKLOG = Gauge(
    "mesh_durable_backlog", "Durable messages waiting for delivery, by agent type, as this worker last saw them.",
    ["type"], registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "mesh_dead_letters", "Durable messages moved to the dead-letter stream, by agent type.", ["type"],
    registry=REGISTRY,
)
MAIL_MESSAGES = Counter(
    "mesh_mail_messages", "Mail received over SMTP, by outcome (accepted or rejected) and reason.",
    ["outcome", "reason"], registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "mesh_http_requests", "HTTP bridge requests, by method, route template and status code.",
    ["method", "route", "status"], registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "mesh_http_request_duration_seconds", "HTTP bridge request latency, by method and route template.",
    ["method", "route"], buckets=TURN_BUCKETS, registry=REGISTRY,
)


def render() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)


class MetricsObserver:
    """Counts turns and state writes as the runtime reports them (no I/O: a few dict lookups).

    `labels()` costs more than the increment itself, so each labelled child is looked up once.
    """

    def __init__(self) -> None:
        self._turns: dict[tuple[str, str], Any] = {}
        self._turn_seconds: dict[str, Any] = {}
        self._writes: dict[str, tuple[Any, Any]] = {}

    def on_turn(self, record: TurnRecord) -> None:
        key = (record.agent_type, record.outcome)
        counter = self._turns.get(key)
        if counter is None:
            counter = self._turns[key] = TURNS.labels(*key)
        counter.inc()
        seconds = self._turn_seconds.get(record.agent_type)
        if seconds is None:
            seconds = self._turn_seconds[record.agent_type] = TURN_SECONDS.labels(record.agent_type)
        seconds.observe(max(0.0, record.ended_at - record.started_at))

    def on_state_saved(self, record: StateRecord) -> None:
        children = self._writes.get(record.agent_type)
        if children is None:
            children = self._writes[record.agent_type] = (
                STATE_WRITES.labels(record.agent_type), STATE_BYTES.labels(record.agent_type),
            )
        children[0].inc()
        children[1].observe(record.size)


class RuntimeCollector(Collector):
    """Instances a runtime holds, read at scrape time; register with `REGISTRY.register(...)`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.runtime.statistics()
        activations = GaugeMetricFamily("mesh_activations", "Instances this worker has in memory.")
        activations.add_metric([], stats["activations"])
        owned = GaugeMetricFamily("mesh_instances_owned", "Instances this worker owns (runs the turns of).")
        owned.add_metric([], stats["owned"])
        yield activations
        yield owned

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
