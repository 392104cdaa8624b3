"""The Agents SDK's traces as structlog lines, linked to the mesh trace id; nothing sent to OpenAI.

`LLMAgent` starts every run with the SDK trace id `trace_<mesh trace id>`, so the SDK's spans
(agent, generation, function, handoff) and the mesh's turn logs share one id. The SDK's default
exporter (which uploads traces to OpenAI) is replaced unless `export_to_openai=True`.
"""

from __future__ import annotations

from typing import Any

import structlog
from agents import add_trace_processor, set_trace_processors
from agents.tracing import Span, Trace, TracingProcessor

log = structlog.get_logger("mesh.llm.trace")
_configured = False


class StructlogTracingProcessor(TracingProcessor):
    """Logs `sdk_trace.started|ended` and `sdk_span.ended` with the mesh trace id."""

    def on_trace_start(self, trace: Trace) -> None:
        log.debug("sdk_trace.started", trace_id=_mesh_id(trace.trace_id), name=trace.name)

    def on_trace_end(self, trace: Trace) -> None:
        log.debug("sdk_trace.ended", trace_id=_mesh_id(trace.trace_id), name=trace.name)

    def on_span_start(self, span: Span[Any]) -> None:
        return None

    def on_span_end(self, span: Span[Any]) -> None:
        data = span.span_data.export() or {}
        fields: dict[str, Any] = {
            "trace_id": _mesh_id(span.trace_id),
            "span_id": span.span_id,
            "parent_id": span.parent_id,
            "span_type": data.get("type"),
            "started_at": span.started_at,
            "ended_at": span.ended_at,
        }
        for key in ("name", "from_agent", "to_agent", "model"):
            if data.get(key):
                fields[key] = data[key]
        if span.error:
            fields["error"] = span.error.get("message")
            log.info("sdk_span.failed", **fields)
        else:
            log.debug("sdk_span.ended", **fields)

    def shutdown(self) -> None:
        return None

    def force_flush(self) -> None:
        return None


def configure_sdk_tracing(*, export_to_openai: bool = False) -> None:
    """Route SDK traces to structlog; keep the OpenAI exporter only when asked to."""
    global _configured
    if _configured:
        return
    processor = StructlogTracingProcessor()
    if export_to_openai:
        add_trace_processor(processor)
    else:
        set_trace_processors([processor])
    _configured = True


def ensure_sdk_tracing() -> None:
    """Called before each run: the first run without explicit configuration keeps traces local."""
    if not _configured:
        configure_sdk_tracing(export_to_openai=False)


def _mesh_id(sdk_trace_id: str | None) -> str | None:
    if sdk_trace_id and sdk_trace_id.startswith("trace_"):
        return sdk_trace_id[len("trace_") :]
    return sdk_trace_id
