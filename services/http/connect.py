"""Connections on the bridge: `/agents/{type}/{name}/connect`, and what every held connection shares.

A client's WebSocket ends on this bridge process; the instance it connected to lives wherever its
owner runs. `ConnectionHub` is the bridge's side of `mesh.connections`:

- One core subscription per bridge process, `_mesh.conn.<bridge>.*`, receives what instances send
  to its connections (`Mesh-Frame: text|binary|close`) and hands each frame to its `Link`.
- A lease (`mesh.reaper.BridgeLease`) tells the workers this bridge is alive; should it lapse
  (the bridge cut off from NATS), the bridge closes its connections with 1012, since the workers'
  reaper may already be running their `on_close`.
- A `Link` is one held connection. It sends the connection's events to the instance as requests,
  one at a time and each after the previous reply (`connect`, every frame as `message`, `close`),
  and writes what the instance sends through a bounded queue: a client that does not read fast
  enough to keep it under `send_queue_bytes` is closed with 1013 (try again later) and the queue
  dropped, so no client grows the bridge's memory without bound.

Close codes the bridge chooses: 1008 policy (bad type or name), 1009 a frame over the body limit,
1012 the bridge lost its lease or is restarting, 1013 a slow client, and 4000 + the error's status
when a turn failed (`on_connect` refused: 4000 + its status; `on_message` raised: the same, e.g.
4500 for `handler_error`, 4410 when the instance no longer holds the connection). A turn that
could not run for a moment (503, 504: the owner is moving) leaves the connection open; that frame
may be lost.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp
from starlette.websockets import WebSocket, WebSocketDisconnect

from mesh import subjects
from mesh.bus import Message, Subscription, subscribe
from mesh.connections import (
    CLOSE,
    CONNECT,
    FRAME_BINARY,
    FRAME_CLOSE,
    FRAME_TEXT,
    MESSAGE,
    WEBSOCKET,
    CloseInfo,
    ConnectInfo,
    connections_bucket,
    event_headers,
)
from mesh.errors import MeshError, MeshTimeout, NoResponders, Unavailable
from mesh.reaper import BridgeLease, new_bridge_id
from services.http.bridge import Bridge
from services.http.problems import problem

log = structlog.get_logger("services.http.connect")

SECRET_HEADERS = frozenset({"authorization", "cookie", "sec-websocket-key", "x-twilio-signature"})
SECRET_QUERY = frozenset({"ticket", "token"})
RETRYABLE = (Unavailable, MeshTimeout, NoResponders)
"""Turn errors that leave a connection open: nothing was wrong with the frame, the owner was moving."""
CLOSE_WAIT = 2.0
"""Seconds a closing link waits for the client's close reply before it lets go."""

Control = Callable[[str, bytes], None]
"""What a link with its own protocol (a phone call) does with the instance's frames instead of
writing them to the client: `(frame kind, payload)`."""


@dataclass(frozen=True)
class Closing:
    code: int
    reason: str


class Link:
    """One connection held by this bridge: its events to the instance, the instance's frames to it."""

    def __init__(self, hub: ConnectionHub, ws: WebSocket, agent_type: str, name: str, *, control: Control | None = None) -> None:
        self.hub = hub
        self.ws = ws
        self.agent_type = agent_type
        self.name = name
        self.id = new_bridge_id()[1:]  # 12 hex digits, unique enough per instance
        self.subject = subjects.agent_subject(agent_type, name)
        self.control = control
        self.connected = False  # a connect event was sent: a close event must follow
        self.closing: Closing | None = None  # why this side closes (None: the client closed)
        self.client_close: Closing | None = None
        self._frames: deque[tuple[str, bytes] | Closing] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._turns = asyncio.Lock()
        self.overflowed = False
        self.writer: asyncio.Task[None] | None = None

    # -- events to the instance ----------------------------------------------------------------

    async def event(self, event: str, body: bytes, frame: str | None = None) -> bytes:
        """Send one event as a turn of the instance and return its reply (raises its error).

        Events of one link go one at a time, in the order they were asked for (the lock is fair).
        """
        async with self._turns:
            return await self.hub.bridge.client.call_raw(
                self.subject,
                body,
                headers=event_headers(self.id, self.hub.bridge_id, event, frame),
                timeout=self.hub.bridge.config.timeout,
            )

    async def connect(self, info: ConnectInfo) -> bytes:
        self.connected = True
        return await self.event(CONNECT, info.__pydantic_serializer__.to_json(info))

    async def send_close_event(self) -> None:
        """Tell the instance the connection ended (once); a failure is logged, the reaper is the fallback."""
        if not self.connected:
            return
        self.connected = False
        ended = self.closing or self.client_close or Closing(1005, "")
        body = orjson.dumps({"code": ended.code, "reason": ended.reason})
        try:
            await self.event(CLOSE, body)
        except MeshError as exc:
            log.warning("connection.close_event_failed", connection=self.id, instance=self.subject, code=exc.code)

    # -- frames from the instance ----------------------------------------------------------------

    def deliver(self, frame: str, payload: bytes) -> None:
        """A frame the instance sent (called from the NATS subscription: never blocks)."""
        if frame == FRAME_CLOSE:
            try:
                info = CloseInfo.model_validate_json(payload)
            except ValueError:
                info = CloseInfo(code=1000)
            self.close(info.code, info.reason)
            return
        if self.control is not None:
            self.control(frame, payload)
            return
        self.write(frame, payload)

    def close(self, code: int, reason: str = "") -> None:
        """Close after the frames already queued (the instance's frames keep their order)."""
        if self.closing is None:
            self.closing = Closing(code, reason[:120])
            self._frames.append(self.closing)
            self._wake.set()

    def overflow(self) -> None:
        """The client reads too slowly: drop what is queued and close it with 1013 at once."""
        if self.overflowed:
            return
        self.overflowed = True
        self.closing = Closing(1013, "client too slow")
        self._frames.clear()
        self._queued = 0
        log.info("connection.slow_client", connection=self.id, instance=self.subject)
        if self.writer is not None:
            self.writer.cancel()

    async def write_loop(self) -> None:
        """Write queued frames to the client; ends after writing a close."""
        while True:
            while not self._frames:
                self._wake.clear()
                await self._wake.wait()
            item = self._frames.popleft()
            if isinstance(item, Closing):
                await close_socket(self.ws, item.code, item.reason)
                return
            frame, payload = item
            self._queued -= len(payload)
            try:
                if frame == FRAME_BINARY:
                    await self.ws.send_bytes(payload)
                else:
                    await self.ws.send_text(payload.decode(errors="replace"))
            except (OSError, RuntimeError, WebSocketDisconnect):
                return  # the client is gone: the reader sees its disconnect

    def write(self, frame: str, payload: bytes) -> None:
        """Queue a frame for the client (the instance's, or the bridge's own: a phone call's audio),
        within the connection's send bound."""
        if self.closing is not None:
            return
        self._queued += len(payload)
        if self._queued > self.hub.send_queue_bytes:
            self.overflow()
            return
        self._frames.append((frame, payload))
        self._wake.set()

    def discard_queued(self) -> None:
        """Drop frames not yet written (a phone call's `clear`: the caller interrupted)."""
        kept = [item for item in self._frames if isinstance(item, Closing)]
        self._frames.clear()
        self._frames.extend(kept)
        self._queued = 0


class ConnectionHub:
    """Everything this bridge process's connections share: its id, lease and NATS subscription."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.bridge_id = new_bridge_id()
        self.send_queue_bytes = bridge.config.send_queue_bytes
        self.links: dict[str, Link] = {}
        self.lease: BridgeLease | None = None
        self._sub: Subscription | None = None

    async def start(self) -> None:
        bucket = await connections_bucket(self.bridge.nc)
        self.lease = BridgeLease(bucket, self.bridge_id, ttl=self.bridge.config.lease_ttl)
        await self.lease.start()
        self._sub = await subscribe(self.bridge.nc, subjects.connection_wildcard(self.bridge_id), cb=self._on_frame)
        self.bridge.spawn(self._serve_lease())
        log.info("connections.started", bridge=self.bridge_id)

    def fenced(self) -> bool:
        return self.lease is None or self.lease.fenced()

    def open(self, ws: WebSocket, agent_type: str, name: str, *, control: Control | None = None) -> Link:
        link = Link(self, ws, agent_type, name, control=control)
        self.links[link.id] = link
        return link

    def forget(self, link: Link) -> None:
        self.links.pop(link.id, None)

    async def _on_frame(self, msg: Message) -> None:
        link = self.links.get(msg.subject.rsplit(".", 1)[-1])
        if link is None:
            return  # the connection closed meanwhile: a send to it is dropped (subjects.md)
        frame = (msg.headers or {}).get(subjects.HEADER_FRAME, FRAME_TEXT)
        link.deliver(frame, msg.data)

    async def _serve_lease(self) -> None:
        assert self.lease is not None
        lease = self.lease
        while True:
            await asyncio.sleep(lease.heartbeat)
            try:
                await lease.renew()
            except MeshError as exc:
                log.warning("bridge.lease_renew_failed", bridge=self.bridge_id, error=exc.message)
            if lease.fenced() and self.links:
                log.warning("bridge.fenced", bridge=self.bridge_id, connections=len(self.links))
                for link in list(self.links.values()):
                    link.close(1012, "bridge lost its lease")


async def hub_of(app: ASGIApp) -> ConnectionHub:
    """The app's hub, started on first use (a bridge that never holds a connection holds no lease)."""
    state = app.state  # type: ignore[attr-defined]
    hub: ConnectionHub | None = getattr(state, "connection_hub", None)
    if hub is not None:
        return hub
    lock: asyncio.Lock | None = getattr(state, "connection_hub_lock", None)
    if lock is None:
        lock = state.connection_hub_lock = asyncio.Lock()
    async with lock:
        hub = getattr(state, "connection_hub", None)
        if hub is None:
            hub = ConnectionHub(state.bridge)
            await hub.start()
            state.connection_hub = hub
    return hub


def connect_info(ws: WebSocket, kind: str = WEBSOCKET, info: Mapping[str, object] | None = None) -> ConnectInfo:
    """What the instance is told about the client: path, headers and query, without credentials."""
    headers = Headers(scope=ws.scope)
    query = QueryParams(ws.scope.get("query_string", b"").decode("latin-1"))
    return ConnectInfo(
        kind=kind,
        path=ws.url.path,
        headers={k: v for k, v in headers.items() if k not in SECRET_HEADERS},
        query={k: v for k, v in query.items() if k not in SECRET_QUERY},
        info=dict(info or {}),
    )


def close_code(err: MeshError) -> int:
    """The close code for a failed turn: 4000 + its status (4400 bad request, 4404, 4500, ...)."""
    status = err.status if 400 <= err.status <= 599 else 500
    return 4000 + status


async def instance_addressed(ws: WebSocket) -> tuple[str, str] | None:
    """The `(type, name)` of a live route's path, or None once the handshake was refused with the
    problem (a type or name that cannot be addressed)."""
    try:
        agent_type = subjects.check_type(ws.path_params["type"])
        name = ws.path_params["name"]
        subjects.encode_name(name)
    except MeshError as err:
        await ws.send_denial_response(problem(err, ws.url.path))
        return None
    return agent_type, name


async def connect(ws: WebSocket) -> None:
    """`GET /agents/{type}/{name}/connect`: a WebSocket held for the instance (module doc).

    The handshake completes only once `on_connect` has run: a client that is connected is known to
    the instance. A refused connect is an HTTP answer instead (a problem document: 404 for a type
    that takes no connections, or `on_connect`'s error).
    """
    addressed = await instance_addressed(ws)
    if addressed is None:
        return
    agent_type, name = addressed
    hub = await hub_of(ws.app)
    if hub.fenced():
        await ws.send_denial_response(problem(Unavailable("this bridge is not serving connections now"), ws.url.path))
        return
    link = hub.open(ws, agent_type, name)
    try:
        try:
            await link.connect(connect_info(ws))
        except MeshError as err:
            if not isinstance(err, RETRYABLE):
                link.connected = False  # refused: no record was stored, nothing to close
            await ws.send_denial_response(problem(err, ws.url.path))
            return
        await ws.accept()
        await serve_link(link, lambda: read_frames(link))
    finally:
        hub.forget(link)
        await link.send_close_event()


async def serve_link(link: Link, reader: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a link's reader and writer until the connection ends; returns once both are done."""
    loop = asyncio.get_running_loop()
    link.writer = loop.create_task(link.write_loop())
    read = loop.create_task(reader())
    try:
        await asyncio.wait({link.writer, read}, return_when=asyncio.FIRST_COMPLETED)
        if not read.done():
            # This side closed (or gave up on a slow client): wait a moment for the client's reply.
            if link.overflowed:
                await close_socket(link.ws, 1013, "client too slow")
            try:
                async with asyncio.timeout(CLOSE_WAIT):
                    await asyncio.shield(read)
            except TimeoutError:
                pass
    finally:
        for task in (link.writer, read):
            task.cancel()
        results = await asyncio.gather(link.writer, read, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, WebSocketDisconnect):
                log.warning("connection.failed", connection=link.id, instance=link.subject, error=repr(result)[:300])


async def read_frames(link: Link) -> None:
    """Send each frame the client sends to the instance, one turn at a time, until it disconnects."""
    ws = link.ws
    limit = link.hub.bridge.max_body
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            link.client_close = Closing(int(message.get("code", 1005)), str(message.get("reason") or ""))
            return
        if link.closing is not None:
            continue  # closing: what the client still sends is not delivered
        text, data = message.get("text"), message.get("bytes")
        payload, frame = (text.encode(), FRAME_TEXT) if text is not None else (data or b"", FRAME_BINARY)
        if len(payload) > limit:
            link.close(1009, f"frame over {limit} bytes")
            continue
        try:
            await link.event(MESSAGE, payload, frame)
        except RETRYABLE as err:
            log.warning("connection.frame_lost", connection=link.id, instance=link.subject, code=err.code)
        except MeshError as err:
            link.close(close_code(err), err.code)


async def close_socket(ws: WebSocket, code: int, reason: str) -> None:
    """Close, without waiting long on a client that reads nothing (its buffer may be full)."""
    try:
        async with asyncio.timeout(1.0):
            await ws.close(code=code, reason=reason[:120])
    except (TimeoutError, RuntimeError, OSError):
        pass
    except WebSocketDisconnect:
        pass
