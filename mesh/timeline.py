"""Reading the flight recorder: follow events live (`mesh tail`) or replay an instance's history.

Events are read back as `Event` values whatever produced them: the recorder's own kinds (`turn`,
`error`, `call`, `state`) and anything an agent or service emitted on `events.<type>.<token>.<kind>`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from mesh import subjects
from mesh._nats import (
    Connection,
    Message,
    find_stream,
    follow_stream,
    map_errors,
    next_message,
    stream_subjects,
    subscribe,
    unsubscribe,
)
from mesh.tracing import trace_id


@dataclass(frozen=True)
class Event:
    agent_type: str
    name: str
    kind: str
    trace_id: str | None
    at: float  # seconds since the epoch
    data: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.agent_type,
            "name": self.name,
            "kind": self.kind,
            "trace_id": self.trace_id,
            "at": self.at,
            "data": self.data,
        }

    def line(self) -> str:
        """One human-readable line: time, address, kind, a summary and the trace id."""
        stamp = datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        data = self.data if isinstance(self.data, dict) else {}
        if self.kind in ("turn", "error"):
            summary = f"{data.get('outcome')} {data.get('duration_ms')}ms worker={data.get('worker')}"
            if data.get("caller"):
                summary += f" caller={data['caller']}"
            if data.get("error"):
                summary += f" error={str(data['error'])[:200]!r}"
        elif self.kind == "call":
            summary = f"-> {data.get('to')} {data.get('outcome')} {data.get('duration_ms')}ms"
        elif self.kind == "state":
            summary = f"revision={data.get('revision')} size={data.get('size')} worker={data.get('worker')}"
        else:
            summary = orjson.dumps(self.data).decode()[:500]
        trace = f" trace={self.trace_id}" if self.trace_id else ""
        return f"{stamp} {self.agent_type}/{self.name} {self.kind} {summary}{trace}"


def filter_subject(address: str | None) -> str:
    """`events.>`, `events.TYPE.>` or `events.TYPE.TOKEN.>` for `None`, `TYPE` or `TYPE/NAME`."""
    if not address:
        return "events.>"
    if "/" not in address:
        return f"events.{subjects.check_type(address)}.>"
    agent_type, name = subjects.parse_address(address)
    return f"events.{subjects.instance_key(agent_type, name)}.>"


def decode(msg: Message, stored_at: float | None = None) -> Event | None:
    """The event in a message, or None when its subject is not an instance event subject.

    Its time is when it happened (a turn's start) if the body says so, else when it was stored
    (`stored_at`), else now.
    """
    parts = msg.subject.split(".")
    if len(parts) != 4:
        return None
    try:
        name = subjects.decode_name(parts[2])
    except Exception:
        return None
    try:
        data = orjson.loads(msg.data) if msg.data else None
    except orjson.JSONDecodeError:
        data = msg.data.decode(errors="replace")
    tid = data.get("trace_id") if isinstance(data, dict) else None
    tid = tid or trace_id((msg.headers or {}).get(subjects.HEADER_TRACEPARENT))
    at = _time_of(data) or stored_at or datetime.now(UTC).timestamp()
    return Event(parts[1], name, parts[3], tid, at, data)


def _time_of(data: Any) -> float | None:
    if isinstance(data, dict):
        for field in ("started_at", "at"):
            if isinstance(data.get(field), (int, float)):
                return float(data[field])
    return None


async def follow(nc: Connection, subject: str) -> AsyncGenerator[Event, None]:
    """Live events on `subject` (core subscription: works with or without the events stream)."""
    sub = await subscribe(nc, subject)
    try:
        with map_errors(f"subscribe to {subject}"):
            await nc.flush()
        while True:
            msg = await next_message(sub, None)
            event = None if msg is None else decode(msg)
            if event is not None:
                yield event
    finally:
        await unsubscribe(sub)


async def history(nc: Connection, subject: str, *, limit: int = 100, wait: float = 5.0) -> list[Event]:
    """The last `limit` stored events on `subject` in the order they happened ([] when none are stored).

    Stream order is publication order, and a turn is published when it ends, after the calls it
    made; sorting by each event's own time puts a turn before its calls.
    """
    js = nc.jetstream()
    stream = await find_stream(js, subject)
    if stream is None or not await stream_subjects(js, stream, subject):
        return []
    kept: deque[Event] = deque(maxlen=limit)
    sub = await follow_stream(js, subject, stream)
    try:
        while True:
            msg = await next_message(sub, wait)
            if msg is None:
                break
            event = decode(msg, stored_at=msg.metadata.timestamp.timestamp())
            if event is not None:
                kept.append(event)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await unsubscribe(sub)
    return sorted(kept, key=lambda e: e.at)
