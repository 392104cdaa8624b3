"""Optional OpenTelemetry export: each turn becomes a span with the mesh's own trace and span ids.

Only used when `opentelemetry-sdk` is installed (`MESH_OTEL=true`); nothing here is imported by the
runtime otherwise. A turn's `traceparent` already is a W3C span context, so the exported span keeps
its trace id and span id exactly: spans of one request across agents share one trace in any
OpenTelemetry backend, and they match the `trace_id` of the flight recorder's events.

`OtelObserver` hands finished spans to a `SpanProcessor`; use a `BatchSpanProcessor` (it exports
from a thread of its own, off the turn path). `from_environment()` builds one with the OTLP/HTTP
exporter when `opentelemetry-exporter-otlp-proto-http` is installed (configured by the standard
`OTEL_EXPORTER_OTLP_*` variables).
"""

from __future__ import annotations

from typing import Any

import structlog

from mesh.observe import StateRecord, TurnRecord

log = structlog.get_logger("mesh.otel")

try:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    AVAILABLE = True
except ImportError:  # the SDK is optional
    AVAILABLE = False


class OtelObserver:
    """Exports one SERVER span per turn (`<type> turn`), with type, name, worker and outcome attributes."""

    def __init__(self, processor: SpanProcessor, *, service_name: str = "agent-mesh") -> None:
        if not AVAILABLE:
            raise RuntimeError("opentelemetry-sdk is not installed")
        self.processor = processor
        self.resource = Resource.create({"service.name": service_name})
        self.scope = InstrumentationScope("agent-mesh")

    def on_turn(self, record: TurnRecord) -> None:
        tp = record.traceparent
        try:
            trace_id, span_id = int(tp[3:35], 16), int(tp[36:52], 16)
        except ValueError:
            return
        context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        attributes: dict[str, Any] = {
            "mesh.type": record.agent_type,
            "mesh.name": record.name,
            "mesh.worker": record.worker,
            "mesh.turn_id": record.turn_id,
            "mesh.outcome": record.outcome,
        }
        if record.caller:
            attributes["mesh.caller"] = record.caller
        status = Status(StatusCode.OK) if record.outcome == "ok" else Status(StatusCode.ERROR, record.error)
        span = ReadableSpan(
            f"{record.agent_type} turn",
            context=context,
            resource=self.resource,
            attributes=attributes,
            kind=SpanKind.SERVER,
            status=status,
            start_time=int(record.started_at * 1e9),
            end_time=int(record.ended_at * 1e9),
            instrumentation_scope=self.scope,
        )
        try:
            self.processor.on_end(span)
        except Exception as exc:  # an exporter problem must never fail a turn
            log.warning("otel.export_failed", error=str(exc))

    def on_state_saved(self, record: StateRecord) -> None:
        return None

    def shutdown(self) -> None:
        self.processor.shutdown()


def from_environment(service_name: str = "agent-mesh") -> OtelObserver | None:
    """An observer exporting over OTLP/HTTP, or None (logged) when the packages are missing."""
    if not AVAILABLE:
        log.warning("otel.unavailable", reason="opentelemetry-sdk is not installed")
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found,unused-ignore]
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("otel.unavailable", reason="opentelemetry-exporter-otlp-proto-http is not installed")
        return None
    return OtelObserver(BatchSpanProcessor(OTLPSpanExporter()), service_name=service_name)
