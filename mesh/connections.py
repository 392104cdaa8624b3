"""Connections an agent instance holds: WebSocket clients and phone calls that a bridge terminates.

    class Room(Agent[RoomState]):
        async def on_connect(self, conn: Connection) -> None:
            for line in self.state.lines[-50:]:
                await conn.send(orjson.dumps(line).decode())

        async def on_message(self, conn: Connection, data: str | bytes) -> None:
            await self.broadcast(data)

A client connects to whichever bridge process it reaches, and the connection ends there. The
bridge tells the instance about it with requests on the instance's own subject, each one a turn of
the instance like any other (one at a time, state saved, errors answered): `connect`, then every
frame as a `message`, then `close`. The bridge sends a connection's events one at a time, each
only after the previous turn's reply: so `on_connect` has finished, and the state it left is saved,
before that connection's first `on_message`, and frames arrive in order. The headers
`Mesh-Connection`, `Mesh-Connection-Event` and `Mesh-Bridge` name the connection, its event and the
bridge holding it; `mesh.turns.run_handler` hands such a request to `dispatch`.

The instance answers over core NATS: `Connection.send` and `close` publish to
`_mesh.conn.<bridge>.<conn>`, which the bridge holding the connection subscribes to (one
subscription per bridge process). It is fire-and-forget: a frame for a connection that has just
closed is dropped by the bridge, and the instance hears of the close through `on_close`.

Records live in the `mesh_conns` bucket, so they outlive the worker that owns the instance: after a
takeover the new owner reads them back and can still send to every connection.

    inst.<type>.<token>.<conn>    the connection's record (bridge, headers, query, state, tags),
                                  written by the owner in the turn that changed it
    bridge.<bridge>.<conn>        `<type>.<token>`: the connections of one bridge, for the reaper
    lease.<bridge>, known.<bridge>  the bridge's lease (per-message TTL) and a marker that outlives it

`mesh.reaper.Reaper` sends `close` for the connections of a bridge whose lease is gone.
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from mesh import subjects
from mesh._nats import Bucket, open_bucket, publish, publish_now
from mesh._nats import Connection as NatsConnection
from mesh.errors import ConnectionGone, MethodNotFound, PayloadTooLarge, RequestError, SchemaMismatch, StateTooLarge

CONNECT, MESSAGE, CLOSE = "connect", "message", "close"
"""The events a bridge sends about a connection (`Mesh-Connection-Event`)."""
FRAME_TEXT, FRAME_BINARY, FRAME_CLOSE = "text", "binary", "close"
"""`Mesh-Frame`: what a frame is, in both directions (`close` only from the instance)."""
WEBSOCKET, MEDIA_STREAM = "websocket", "media-stream"
"""Connection kinds: `/agents/{type}/{name}/connect` and a phone call's Twilio media stream."""

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STATE_BYTES = 16 * 1024
"""A connection's record (headers, query, state, tags) stays small: it is written on every change."""

_buckets: weakref.WeakKeyDictionary[NatsConnection, Bucket] = weakref.WeakKeyDictionary()


class ConnectInfo(BaseModel):
    """The body of a `connect` event: what the bridge knows about the client."""

    model_config = ConfigDict(extra="forbid")
    kind: str = Field(default=WEBSOCKET, description="websocket, or media-stream for a phone call.")
    path: str = Field(default="", description="The request path the client connected to.")
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers, without credentials.")
    query: dict[str, str] = Field(default_factory=dict, description="Query parameters, without `ticket`.")
    info: dict[str, Any] = Field(default_factory=dict, description="Kind-specific facts (a call's Twilio `start`).")


class CloseInfo(BaseModel):
    """The body of a `close` event."""

    code: int = 1005
    reason: str = ""


class ConnectionRecord(BaseModel):
    """What `mesh_conns` keeps of a connection (`inst.<type>.<token>.<conn>`)."""

    id: str
    bridge: str
    kind: str = WEBSOCKET
    path: str = ""
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)
    state: Any = None
    tags: list[str] = Field(default_factory=list)
    opened_at: float = 0.0


class Connection:
    """One client connection of an instance, wherever the bridge holding it runs.

    `state` (any small JSON value) and `tags` belong to the connection; changes made in a turn of
    one of its events are saved when that turn's handler returns, changes made elsewhere with
    `await conn.save()`. After `on_close` the connection is gone: `send` raises `ConnectionGone`.
    """

    __slots__ = ("_record", "_nc", "_owner", "_saved", "state", "tags", "closed", "close_code", "close_reason")

    def __init__(self, record: ConnectionRecord, nc: NatsConnection, owner: Connections | None = None) -> None:
        self._record = record
        self._nc = nc
        self._owner = owner
        self.state: Any = record.state
        self.tags: set[str] = set(record.tags)
        self._saved = b""  # the record as last written
        self.closed = False
        self.close_code: int | None = None
        """Set for `on_close`: the WebSocket close code (1006 when the bridge died)."""
        self.close_reason = ""

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.kind} via {self.bridge}>"

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def bridge(self) -> str:
        """The id of the bridge process holding the connection."""
        return self._record.bridge

    @property
    def kind(self) -> str:
        return self._record.kind

    @property
    def path(self) -> str:
        return self._record.path

    @property
    def headers(self) -> dict[str, str]:
        """The client's request headers (lower-case names; `authorization` and `cookie` are never kept)."""
        return self._record.headers

    @property
    def query(self) -> dict[str, str]:
        return self._record.query

    @property
    def info(self) -> dict[str, Any]:
        """Kind-specific facts: for a `media-stream`, the call (`callSid`, `streamSid`, `from`, ...)."""
        return self._record.info

    @property
    def opened_at(self) -> float:
        return self._record.opened_at

    async def send(self, data: str | bytes) -> None:
        """Send one frame to the client (text for `str`, binary for `bytes`). Fire-and-forget: a
        frame that reaches the bridge after the client left is dropped there."""
        if self.closed:
            raise ConnectionGone(f"connection {self.id} is closed")
        if isinstance(data, str):
            await self._publish(data.encode(), FRAME_TEXT)
        else:
            await self._publish(bytes(data), FRAME_BINARY)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Ask the bridge to close the connection; `on_close` follows, as for any close."""
        if self.closed:
            return
        await self._publish(orjson.dumps({"code": code, "reason": reason[:120]}), FRAME_CLOSE)

    async def save(self) -> None:
        """Write the connection's `state` and `tags` now (done anyway after its own events' turns)."""
        if self._owner is not None and not self.closed:
            await self._owner.save(self)

    async def _publish(self, payload: bytes, frame: str) -> None:
        if len(payload) > self._nc.max_payload - 1024:
            raise PayloadTooLarge(f"frame of {len(payload)} bytes is over NATS max_payload")
        subject = subjects.connection_subject(self.bridge, self.id)
        headers = {subjects.HEADER_FRAME: frame}
        if not publish_now(self._nc, subject, payload, headers):
            await publish(self._nc, subject, payload, headers)

    def record(self) -> ConnectionRecord:
        """The record as it should be stored now."""
        return self._record.model_copy(update={"state": self.state, "tags": sorted(self.tags)})


class Connections:
    """The connections of one instance, loaded from `mesh_conns` on first use and kept in memory
    while this worker owns the instance (its single owner is the only writer of its records)."""

    def __init__(self, nc: NatsConnection, instance_key: str) -> None:
        self.nc = nc
        self.instance_key = instance_key
        self._open: dict[str, Connection] | None = None

    async def all(self, tag: str | None = None) -> list[Connection]:
        """Open connections, in the order they opened (only those with `tag`, if given)."""
        found = await self._load()
        return [c for c in found.values() if tag is None or tag in c.tags]

    async def get(self, conn_id: str) -> Connection | None:
        return (await self._load()).get(conn_id)

    async def broadcast(self, data: str | bytes, *, exclude: Iterable[str | Connection] = (), tag: str | None = None) -> int:
        """Send `data` to every open connection (with `tag`), except `exclude`; how many were sent to."""
        skip = {c if isinstance(c, str) else c.id for c in exclude}
        sent = 0
        for conn in await self.all(tag):
            if conn.id not in skip:
                await conn.send(data)
                sent += 1
        return sent

    def open(self, record: ConnectionRecord) -> Connection:
        """A connection being connected: listed (and reachable by `broadcast`) during its `on_connect`."""
        conn = Connection(record, self.nc, self)
        if self._open is not None:
            self._open[conn.id] = conn
        return conn

    def drop(self, conn: Connection) -> None:
        if self._open is not None and self._open.get(conn.id) is conn:
            del self._open[conn.id]

    async def save(self, conn: Connection) -> None:
        """Write the record if it changed since it was last written (the first time: its bridge index too)."""
        record = conn.record()
        data = record.__pydantic_serializer__.to_json(record)
        if data == conn._saved:
            return
        if len(data) > MAX_STATE_BYTES:
            raise StateTooLarge(f"connection {conn.id}: record of {len(data)} bytes is over {MAX_STATE_BYTES}")
        bucket = await connections_bucket(self.nc)
        if not conn._saved:
            await bucket.put(index_key(conn.bridge, conn.id), self.instance_key.encode())
        await bucket.put(record_key(self.instance_key, conn.id), data)
        conn._saved = data
        if self._open is not None:
            self._open.setdefault(conn.id, conn)

    async def remove(self, conn: Connection) -> None:
        conn.closed = True
        self.drop(conn)
        bucket = await connections_bucket(self.nc)
        await bucket.delete(record_key(self.instance_key, conn.id))
        await bucket.delete(index_key(conn.bridge, conn.id))

    async def flush(self) -> None:
        """Save every connection whose state or tags changed."""
        if self._open is not None:
            for conn in list(self._open.values()):
                await self.save(conn)

    def invalidate(self) -> None:
        """Forget what is cached (a turn failed half-way): the next use reads the records again."""
        self._open = None

    async def _load(self) -> dict[str, Connection]:
        if self._open is not None:
            return self._open
        bucket = await connections_bucket(self.nc)
        prefix = f"inst.{self.instance_key}."
        found: list[Connection] = []
        for key in await bucket.keys(prefix):
            entry = await bucket.get(key)
            if entry is None:
                continue  # closed since the listing
            try:
                record = ConnectionRecord.model_validate_json(entry[0])
            except pydantic.ValidationError:
                continue  # not ours to interpret; the reaper or a close removes it
            conn = Connection(record, self.nc, self)
            conn._saved = entry[0]
            found.append(conn)
        found.sort(key=lambda c: c.opened_at)
        self._open = {c.id: c for c in found}
        return self._open


class Hooks(Protocol):
    """The agent hooks a connection event runs (`mesh.agent.Agent` has them)."""

    def accepts_connection(self, kind: str) -> bool: ...

    async def on_connect(self, conn: Connection) -> Any: ...

    async def on_message(self, conn: Connection, data: str | bytes) -> Any: ...

    async def on_close(self, conn: Connection) -> Any: ...


async def dispatch(agent: Hooks, connections: Connections, headers: dict[str, str], data: bytes) -> Any:
    """Run the hook a connection event is for, inside the current turn; its return value is the reply.

    A failed hook leaves no trace of the connection's changes: a refused `connect` stores no record
    (the bridge then closes the client), and the cache is dropped so the next turn reads the records.
    """
    conn_id = headers.get(subjects.HEADER_CONNECTION, "")
    event = headers.get(subjects.HEADER_CONNECTION_EVENT, "")
    bridge = headers.get(subjects.HEADER_BRIDGE, "")
    if not ID_PATTERN.match(conn_id) or not ID_PATTERN.match(bridge):
        raise RequestError("connection events need Mesh-Connection and Mesh-Bridge ids ([A-Za-z0-9_-], at most 64)")
    try:
        if event == CONNECT:
            return await _connect(agent, connections, conn_id, bridge, data)
        if event == MESSAGE:
            conn = await connections.get(conn_id)
            if conn is None:
                raise ConnectionGone(f"this instance holds no connection {conn_id}")
            result = await agent.on_message(conn, _frame(headers, data))
            await connections.save(conn)
            return result
        if event == CLOSE:
            return await _close(agent, connections, conn_id, bridge, data)
    except BaseException:
        connections.invalidate()
        raise
    raise RequestError(f"unknown connection event {event[:40]!r} (connect, message or close)")


async def _connect(agent: Hooks, connections: Connections, conn_id: str, bridge: str, data: bytes) -> Any:
    try:
        info = ConnectInfo.model_validate_json(data or b"{}")
    except pydantic.ValidationError as exc:
        raise SchemaMismatch(f"connect event: {exc.errors()[0]['msg']}") from exc
    if not agent.accepts_connection(info.kind):
        raise MethodNotFound(f"{type(agent).__name__} takes no {info.kind[:40]} connections")
    if await connections.get(conn_id) is not None:
        raise RequestError(f"connection {conn_id} is already open")
    record = ConnectionRecord(
        id=conn_id,
        bridge=bridge,
        kind=info.kind,
        path=info.path,
        headers=info.headers,
        query=info.query,
        info=info.info,
        opened_at=time.time(),
    )
    conn = connections.open(record)
    try:
        result = await agent.on_connect(conn)
        await connections.save(conn)
    except BaseException:
        connections.drop(conn)
        raise
    return result


async def _close(agent: Hooks, connections: Connections, conn_id: str, bridge: str, data: bytes) -> None:
    conn = await connections.get(conn_id)
    if conn is None:  # closed already (a second close, or the reaper after the bridge's own)
        await (await connections_bucket(connections.nc)).delete(index_key(bridge, conn_id))
        return
    try:
        info = CloseInfo.model_validate_json(data or b"{}")
    except pydantic.ValidationError:
        info = CloseInfo()
    conn.close_code, conn.close_reason = info.code, info.reason
    conn.closed = True
    try:
        await agent.on_close(conn)
    finally:
        await connections.remove(conn)


def _frame(headers: dict[str, str], data: bytes) -> str | bytes:
    if headers.get(subjects.HEADER_FRAME, FRAME_TEXT) == FRAME_BINARY:
        return data
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise RequestError("a text frame is not UTF-8") from exc


def event_headers(conn_id: str, bridge: str, event: str, frame: str | None = None) -> dict[str, str]:
    """The headers of one connection event (what a bridge sends)."""
    headers = {
        subjects.HEADER_CONNECTION: conn_id,
        subjects.HEADER_CONNECTION_EVENT: event,
        subjects.HEADER_BRIDGE: bridge,
    }
    if frame is not None:
        headers[subjects.HEADER_FRAME] = frame
    return headers


async def connections_bucket(nc: NatsConnection) -> Bucket:
    """The `mesh_conns` bucket (created on first use), one binding per NATS connection."""
    bucket = _buckets.get(nc)
    if bucket is None:
        bucket = await open_bucket(nc, subjects.CONNECTIONS_BUCKET)
        _buckets[nc] = bucket
    return bucket


def record_key(instance_key: str, conn_id: str) -> str:
    return f"inst.{instance_key}.{conn_id}"


def index_key(bridge: str, conn_id: str) -> str:
    return f"bridge.{bridge}.{conn_id}"


def lease_key(bridge: str) -> str:
    return f"lease.{bridge}"


def known_key(bridge: str) -> str:
    return f"known.{bridge}"
