"""One instance's live feed: its state (a KV watch on its key) merged with its events.

A feed starts with the current state, then yields every state change and every event of the
instance in arrival order. Its position is a `Cursor` (state revision, event stream sequence) that
SSE sends as the event id: given back as `Last-Event-ID`, the state is re-sent only if it changed
and events resume right after the last one seen, when a JetStream stream keeps them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from mesh import subjects
from mesh.bus import Message, Subscription, Watch, follow_stream, subscribe, unsubscribe
from mesh.errors import MeshError, Unavailable
from services.http.bridge import Bridge

log = structlog.get_logger("services.http")
QUEUE_SIZE = 1024


@dataclass(frozen=True)
class Cursor:
    state_revision: int = 0
    event_seq: int = 0

    def __str__(self) -> str:
        return f"{self.state_revision}.{self.event_seq}"

    @classmethod
    def parse(cls, value: str | None) -> Cursor | None:
        if not value:
            return None
        head, _, tail = value.partition(".")
        try:
            return cls(max(0, int(head)), max(0, int(tail or 0)))
        except ValueError:
            return None  # a foreign or garbled id: start from now


@dataclass(frozen=True)
class LiveMessage:
    """`kind` is "state" (data: revision, state) or "event" (data: kind, seq, data)."""

    kind: str
    data: dict[str, Any]
    cursor: Cursor


class LiveFeed:
    """`async with LiveFeed(bridge, "counter", "web") as feed: msg = await feed.next(15)`."""

    def __init__(self, bridge: Bridge, agent_type: str, name: str, resume: Cursor | None = None) -> None:
        self.bridge = bridge
        self.agent_type = agent_type
        self.name = name
        self.key = subjects.instance_key(agent_type, name)
        self.resume = resume
        self.cursor = resume or Cursor()
        self._queue: asyncio.Queue[tuple[str, dict[str, Any], int]] = asyncio.Queue(QUEUE_SIZE)
        self._watcher: Watch | None = None
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._ended = False

    async def __aenter__(self) -> LiveFeed:
        try:
            await self._subscribe_events()
            self._watcher = await self.bridge.state.watch(self.key)
        except BaseException:
            await self.aclose()
            raise
        self._task = asyncio.get_running_loop().create_task(self._pump_state())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the watch and the events subscription (safe to call more than once)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        watcher, sub = self._watcher, self._sub
        for closer in (watcher.stop() if watcher else None, unsubscribe(sub) if sub else None):
            if closer is not None:
                try:
                    await closer
                except MeshError as exc:  # the connection may be closing; nothing left to release
                    log.debug("live.close_failed", error=exc.message)
        self._watcher = self._sub = self._task = None

    def end(self) -> None:
        """Make `next()` raise `Unavailable` from now on, waking a reader that waits in it."""
        self._ended = True
        if not self._queue.full():  # a full queue wakes its reader anyway
            self._queue.put_nowait(("end", {}, 0))

    async def next(self, timeout: float) -> LiveMessage | None:  # noqa: ASYNC109 - None on timeout (a heartbeat is due)
        """The next message, or None if nothing happened for `timeout` seconds (time for a heartbeat).

        Raises `Unavailable` once `end()` was called (the bridge is stopping; the client may reconnect).
        """
        if self._ended:
            raise Unavailable("the HTTP bridge is stopping")
        try:
            kind, data, number = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if kind == "end":
            raise Unavailable("the HTTP bridge is stopping")
        if kind == "state":
            self.cursor = Cursor(number, self.cursor.event_seq)
        elif number:
            self.cursor = Cursor(self.cursor.state_revision, number)
        return LiveMessage(kind, data, self.cursor)

    async def _pump_state(self) -> None:
        sent = False
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is None:
                if not sent and self.resume is None:  # never saved: say so, so the client can render
                    await self._queue.put(("state", {"revision": 0, "state": None}, 0))
                sent = True
                continue
            sent = True
            revision = entry.revision
            if self.resume is not None and revision <= self.resume.state_revision:
                continue  # the client already has this state
            state = None
            if entry.value:
                try:
                    state = orjson.loads(entry.value)
                except orjson.JSONDecodeError:
                    state = None
            await self._queue.put(("state", {"revision": revision, "state": state}, revision))

    async def _subscribe_events(self) -> None:
        subject = subjects.event_wildcard(self.agent_type, self.name)
        stream = self.bridge.events_stream

        async def on_event(msg: Message) -> None:
            seq = 0
            if stream is not None:
                seq = msg.metadata.sequence.stream
            try:
                data = orjson.loads(msg.data) if msg.data else None
            except orjson.JSONDecodeError:
                data = msg.data.decode(errors="replace")
            kind = msg.subject.split(".", 3)[3] if msg.subject.count(".") >= 3 else ""
            try:
                self._queue.put_nowait(("event", {"kind": kind, "seq": seq, "data": data}, seq))
            except asyncio.QueueFull:
                log.warning("live.event_dropped", key=self.key, kind=kind)

        if stream is None:
            self._sub = await subscribe(self.bridge.nc, subject, cb=on_event)
            return
        after = self.resume.event_seq if self.resume is not None and self.resume.event_seq > 0 else -1  # -1: new ones
        self._sub = await follow_stream(self.bridge.nc.jetstream(), subject, stream, after=after, cb=on_event)
