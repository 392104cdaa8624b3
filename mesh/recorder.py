"""The flight recorder: every turn, call, error and state write becomes an event on the instance's
event subjects, kept in the JetStream stream `mesh_events` with age, count and size limits.

The runtime reports turns and state writes to `FlightRecorder` as an observer, synchronously and
right after a turn's replies; the recorder appends each event to the connection's outgoing buffer
(a core publish, no ack awaited), so it leaves in the same socket write as the replies and a slow
or absent NATS never slows a turn down. Events the connection cannot take (reconnecting with a full
buffer) wait in a bounded buffer of the recorder's own, which a task publishes in order later; when
that is full the oldest events are dropped and counted (`mesh_recorder_dropped_events`).

Events (subject `events.<type>.<token>.<kind>`, header `traceparent`, JSON body with `trace_id`):

- `turn`: a turn that succeeded; `error`: a turn that failed (`outcome` is its error code).
  Both carry `worker`, `turn_id`, `started_at`, `ended_at`, `duration_ms` and, when another
  instance called this one, `caller` (its `TYPE/NAME`).
- `call`: on the *caller's* subject, one per call that reached another instance (`to`, `outcome`).
- `state`: a state write (`revision`, `size`).

Durable delivery records `schedule` (a schedule fired) and `dead_letter` (a message gave up);
other services record their own kinds (`approval`) with `record()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog

from mesh import subjects, wire
from mesh._nats import Connection, DiscardPolicy, JetStream, StorageType, StreamConfig, publish, publish_now, stream_for
from mesh.errors import MeshError, Unavailable
from mesh.metrics import EVENTS_DROPPED
from mesh.observe import StateRecord, TurnRecord
from mesh.tasks import TaskSet
from mesh.tracing import trace_id

log = structlog.get_logger("mesh.recorder")

RETRY = 0.1  # seconds between attempts while the connection cannot take events

RECORDER_KINDS = ("turn", "error", "call", "state", "schedule", "dead_letter")


@dataclass(frozen=True)
class EventsLimits:
    """How much history the events stream keeps; the oldest events go first."""

    max_age: float = 7 * 86400.0
    max_msgs: int = 1_000_000
    max_bytes: int = 1024**3
    replicas: int = 1


def events_stream_config(limits: EventsLimits, name: str = subjects.EVENTS_STREAM) -> StreamConfig:
    return StreamConfig(
        name=name,
        subjects=["events.>"],
        storage=StorageType.FILE,
        max_age=limits.max_age,
        max_msgs=limits.max_msgs,
        max_bytes=limits.max_bytes,
        discard=DiscardPolicy.OLD,
        num_replicas=limits.replicas,
        description="agent-mesh events: the flight recorder, and what live views resume from",
    )


async def ensure_events_stream(js: JetStream, limits: EventsLimits, name: str = subjects.EVENTS_STREAM) -> str | None:
    """The name of the stream that keeps `events.>`, created with `limits` if there is none.

    The flight recorder and the HTTP bridge both call this; whichever starts first sets the limits.
    """
    found = await stream_for(js, "events.>", events_stream_config(limits, name))
    if found is None:
        log.warning("recorder.stream_unavailable")
    return found


def address(key: str) -> str:
    """`TYPE/NAME` of an instance key (`type.token`)."""
    agent_type, _, token = key.partition(".")
    try:
        return f"{agent_type}/{subjects.decode_name(token)}"
    except Exception:
        return key


class FlightRecorder:
    """An `Observer` that turns runtime records into events; `start()` it before the runtime."""

    def __init__(self, nc: Connection, *, limits: EventsLimits | None = None, buffer: int = 10_000) -> None:
        self.nc = nc
        self.limits = limits or EventsLimits()
        self._buffer: deque[tuple[str, bytes, dict[str, str]]] = deque()
        self._max = buffer
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()  # set when the publishing task has emptied the buffer
        self._tasks = TaskSet(log, "recorder.task_failed")
        self._task: asyncio.Task[None] | None = None  # the publishing task, once started
        self.published = 0
        self.dropped = 0

    async def start(self, *, create_stream: bool = True) -> None:
        if create_stream:
            await ensure_events_stream(self.nc.jetstream(), self.limits)
        self._task = self._tasks.spawn(self._serve_publish())

    async def stop(self, flush_timeout: float = 2.0) -> None:
        """Publish what is buffered (within `flush_timeout`), then stop."""
        if self._task is None:
            return
        if self._buffer and not self._task.done():
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_timeout):
                    await self._flushed.wait()
        await self._tasks.cancel_all()
        self._task = None
        try:
            await self.nc.flush(timeout=1)
        except Exception:
            pass

    # -- the observer side: called on the turn path, must not block -----------------------------

    def record(self, agent_type: str, name: str, kind: str, data: dict[str, Any], traceparent: str | None = None) -> None:
        """Queue an event of instance `(agent_type, name)`; for services recording their own kinds."""
        try:
            subject = subjects.event_subject(agent_type, name, kind)
        except Exception:
            return
        self._enqueue(subject, data, traceparent)

    def _record(
        self, agent_type: str, name: str, key: str, kind: str, data: dict[str, Any], traceparent: str | None = None
    ) -> None:
        if key:
            self._enqueue(f"events.{key}.{kind}", data, traceparent)
        else:
            self.record(agent_type, name, kind, data, traceparent)

    def on_turn(self, record: TurnRecord) -> None:
        tp = record.traceparent
        tid = tp[3:35] if len(tp) == 55 and tp.startswith("00-") else trace_id(tp)  # the runtime's own: valid
        body: dict[str, Any] = {
            "kind": "turn" if record.outcome == "ok" else "error",
            "type": record.agent_type,
            "name": record.name,
            "worker": record.worker,
            "turn_id": record.turn_id,
            "trace_id": tid,
            "outcome": record.outcome,
            "started_at": record.started_at,
            "ended_at": record.ended_at,
            "duration_ms": round((record.ended_at - record.started_at) * 1000, 3),
        }
        if record.error:
            body["error"] = record.error
        if record.caller:
            body["caller"] = address(record.caller)
        self._record(record.agent_type, record.name, record.key, body["kind"], body, record.traceparent)
        if record.caller:
            caller_type, _, caller_token = record.caller.partition(".")
            call = {
                "kind": "call",
                "type": caller_type,
                "name": address(record.caller).partition("/")[2],
                "to": f"{record.agent_type}/{record.name}",
                "trace_id": tid,
                "outcome": record.outcome,
                "at": record.started_at,
                "duration_ms": body["duration_ms"],
            }
            self._enqueue(f"events.{caller_type}.{caller_token}.call", call, record.traceparent)

    def on_state_saved(self, record: StateRecord) -> None:
        body = {
            "kind": "state",
            "type": record.agent_type,
            "name": record.name,
            "worker": record.worker,
            "revision": record.revision,
            "size": record.size,
            "at": time.time(),
        }
        self._record(record.agent_type, record.name, record.key, "state", body)

    def _enqueue(self, subject: str, body: dict[str, Any], traceparent: str | None) -> None:
        headers: dict[str, str] = {}
        if traceparent and "\n" not in traceparent and "\r" not in traceparent:
            headers[subjects.HEADER_TRACEPARENT] = traceparent
        data = wire.dumps(body)
        if self._task is not None and not self._buffer:
            try:
                sent = publish_now(self.nc, subject, data, headers)
            except MeshError:
                sent = False  # kept below and published later, or dropped
            if sent:
                self.published += 1  # the usual case: out with the next write, in order, nothing to wait for
                return
        if len(self._buffer) >= self._max:
            self._buffer.popleft()
            self.dropped += 1
            EVENTS_DROPPED.inc()
        self._buffer.append((subject, data, headers))
        self._flushed.clear()
        self._wake.set()

    # -- the publishing task ------------------------------------------------------------------

    async def _serve_publish(self) -> None:
        """Publish what had to wait (NATS was away, or the recorder not started yet), in order."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer:
                subject, data, headers = self._buffer[0]
                try:
                    await publish(self.nc, subject, data, headers)  # waits while the outgoing buffer is full
                except Unavailable:
                    await asyncio.sleep(RETRY)  # reconnecting with a full buffer: wait, keep the order
                    continue
                except MeshError as exc:  # closed, oversized: it will never go out
                    self._buffer.popleft()
                    self.dropped += 1
                    EVENTS_DROPPED.inc()
                    log.warning("recorder.publish_failed", subject=subject, code=exc.code, error=exc.message)
                    continue
                self._buffer.popleft()
                self.published += 1
            self._flushed.set()
