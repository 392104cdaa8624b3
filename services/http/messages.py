"""`GET /agents/{type}/{name}/messages`: an LLM instance's conversation, a page at a time, with
the point of its live feed where this page leaves off.

The conversation is the instance's memory (`mesh_memory.<type>.<token>`, one SDK item per
message). Memory holds only finished parts: the SDK stores a model turn's items when the turn has
ended (after its tools ran), and starts the next turn's text only after that write. So the text
being written right now exists only as the `text_delta` events after the run's last other event.
`last_event_id` points just before those deltas when memory does not hold their message yet, else
after the instance's last event: a reader that renders the items and then follows `/events` from
there sees each part of the conversation once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from starlette.requests import Request
from starlette.responses import Response

from mesh import subjects
from mesh.bus import Stored, follow_stream, last_stored, next_message, read_subject, unsubscribe
from mesh.errors import NoResponders, NotStored, RequestError
from services.http.bridge import Bridge
from services.http.live import Cursor
from services.http.routes import address, bridge_of

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SEGMENT_KINDS = (
    "agent_switched",
    "handoff",
    "tool_called",
    "tool_output",
    "message_output",
    "run_completed",
    "run_failed",
    "approval_requested",
    "approval_decided",
    "turn",
    "error",
)
"""The other events of a run (and of a turn): the text deltas after the last of them are the
message being written now (or just written, and maybe already stored)."""
MAX_SEGMENT = 20_000
"""Deltas read to compare a message being written with memory; past that the page replays them."""


@dataclass(frozen=True)
class Page:
    items: list[tuple[int, bytes]]
    more: bool


def page_of(stored: list[tuple[int, bytes]], *, limit: int, before: int | None, after: int | None) -> Page:
    """The newest `limit` items (before `before`), or with `after` the oldest `limit` after it."""
    if after is not None:
        newer = [entry for entry in stored if entry[0] > after]
        return Page(newer[:limit], len(newer) > limit)
    older = [entry for entry in stored if before is None or entry[0] < before]
    return Page(older[-limit:], len(older) > limit)


def _int_param(request: Request, name: str, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise RequestError(f"{name} must be an integer from {low} to {high}")
    return int(raw)


async def get_messages(request: Request) -> Response:
    agent_type, name = address(request)
    bridge = bridge_of(request)
    limit = _int_param(request, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT
    before = _int_param(request, "before", 1, 2**63)
    after = _int_param(request, "after", 0, 2**63)
    if before is not None and after is not None:
        raise RequestError("give before or after, not both")
    try:
        stored = await read_subject(bridge.nc, subjects.MEMORY_STREAM, subjects.memory_subject(agent_type, name))
    except (NoResponders, NotStored):  # no LLM instance ever ran: there is no memory stream yet
        stored = []
    page = page_of(stored, limit=limit, before=before, after=after)
    cursor = await live_cursor(bridge, agent_type, name, stored)
    items = b",".join(b'{"seq":%d,"item":%s}' % (seq, data) for seq, data in page.items)
    body = b'{"type":%s,"name":%s,"items":[%s],"more":%s,"last_event_id":%s}' % (
        orjson.dumps(agent_type),
        orjson.dumps(name),
        items,
        b"true" if page.more else b"false",
        orjson.dumps(None if cursor is None else str(cursor)),
    )
    return Response(body, media_type="application/json")


async def live_cursor(bridge: Bridge, agent_type: str, name: str, memory: list[tuple[int, bytes]]) -> Cursor | None:
    """Where a reader of `memory` (read just before) should follow the instance's events from:
    before the text deltas of a message `memory` does not hold yet, else after the instance's last
    event. None when no stream keeps events (a live view then starts from new events)."""
    stream = bridge.events_stream
    if stream is None:
        return None
    js = bridge.nc.jetstream()
    prefix = f"events.{subjects.instance_key(agent_type, name)}"
    last = await last_stored(js, stream, f"{prefix}.>")
    if last is None:
        return Cursor(0, 0)
    if last.subject.rsplit(".", 1)[-1] in SEGMENT_KINDS:
        return Cursor(0, last.seq)
    delta, *others = await asyncio.gather(
        last_stored(js, stream, f"{prefix}.text_delta"),
        *(last_stored(js, stream, f"{prefix}.{kind}") for kind in SEGMENT_KINDS),
    )
    start = max((found.seq for found in others if found is not None), default=0)
    if delta is None or delta.seq < start or _stale(delta, bridge.config.async_timeout):
        return Cursor(0, last.seq)
    text, first = await _text_between(bridge, stream, f"{prefix}.text_delta", start, delta.seq)
    if text is not None and text in _answers_since_last_question(memory):
        return Cursor(0, last.seq)  # written and already stored: the page holds it
    return Cursor(0, max(start, first - 1))  # (no other event kept before it: from its first delta)


async def _text_between(bridge: Bridge, stream: str, subject: str, after: int, last: int) -> tuple[str | None, int]:
    """The deltas on `subject` after sequence `after` up to `last`, joined (None if too many to
    read), and the sequence of the first."""
    parts: list[str] = []
    first = 0
    sub = await follow_stream(bridge.nc.jetstream(), subject, stream, after=after)
    try:
        async with asyncio.timeout(5):
            while len(parts) < MAX_SEGMENT:
                msg = await next_message(sub, timeout=5)
                if msg is None:
                    break
                seq = msg.metadata.sequence.stream
                first = first or seq
                try:
                    parts.append(str(orjson.loads(msg.data).get("delta", "")))
                except (orjson.JSONDecodeError, AttributeError):
                    pass
                if seq >= last:
                    return "".join(parts), first
    except TimeoutError:
        pass
    finally:
        await unsubscribe(sub)
    return None, first


def _answers_since_last_question(memory: list[tuple[int, bytes]]) -> set[str]:
    """The texts of the assistant messages after the last user message in `memory`."""
    answers: set[str] = set()
    for _, data in reversed(memory):
        item = orjson.loads(data)
        if not isinstance(item, dict) or item.get("role") == "user":
            break
        if item.get("type") == "message" and item.get("role") == "assistant":
            content = item.get("content")
            if isinstance(content, list):
                answers.add("".join(str(part.get("text", "")) for part in content if isinstance(part, dict)))
            elif isinstance(content, str):
                answers.add(content)
    return answers


def _stale(found: Stored, seconds: float) -> bool:
    """A delta older than the longest wait for a run: its run died with its worker."""
    return found.time is not None and (datetime.now(UTC) - found.time).total_seconds() > seconds
