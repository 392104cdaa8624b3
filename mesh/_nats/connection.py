"""Connecting to NATS, and the names the rest of the mesh uses for nats-py's types.

`Connection`, `Message`, `JetStream` and `Subscription` are nats-py's own classes under the mesh's
names: modules outside the seam type-hint with them and call their public methods, but never
import nats-py (so there is one place to read when nats-py changes).
"""

from __future__ import annotations

import contextlib
import re
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import nats
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as _Subscription
from nats.js import JetStreamContext

from mesh._nats import headers, selfcheck
from mesh._nats.errors import map_error, map_errors
from mesh.errors import ConnectionFailed

Connection: TypeAlias = Client
Message: TypeAlias = Msg
JetStream: TypeAlias = JetStreamContext
Subscription: TypeAlias = _Subscription

log = structlog.get_logger("mesh.nats")


@dataclass(frozen=True)
class NatsOptions:
    """How to reach NATS: servers plus optional credentials (all plain values, read at the edge)."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    name: str = "agent-mesh"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    tls_ca_file: str | None = None  # trust this CA (otherwise the system's) for tls:// servers
    tls_cert_file: str | None = None  # client certificate, for servers that verify clients
    tls_key_file: str | None = None
    tls_hostname: str | None = None  # name to check in the server certificate, if not the URL's host
    connect_timeout: float = 2.0
    ping_interval: float = 10.0  # a server silent for 3 pings in a row (20-30 s) is left for another

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context these options ask for, or None to let nats-py decide from the URL scheme."""
        if not (self.tls_ca_file or self.tls_cert_file):
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca_file)
        if self.tls_cert_file:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        return context

    def __repr__(self) -> str:  # never show secrets, even in a traceback's locals
        return f"NatsOptions(servers={redact_servers(self.servers)!r}, name={self.name!r})"

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> NatsOptions:
        servers = tuple(u.strip() for u in url.split(",") if u.strip())
        return cls(servers=servers, **kwargs)


async def connect(options: NatsOptions, *, reconnect: bool = True) -> Connection:
    """Connect with unlimited reconnects; a server that cannot be reached at all is a clear error.

    The connection is then checked against the nats-py internals the seam's shortcuts use
    (`selfcheck`), so a nats-py that changed them is noticed now, once, not per message.
    """
    kwargs: dict[str, Any] = {
        "servers": list(options.servers),
        "name": options.name,
        "connect_timeout": options.connect_timeout,
        # nats-py uses this bound for the first connect too; unbounded would retry a wrong URL forever.
        "max_reconnect_attempts": 2,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": reconnect,
        # nats-py's default (120 s, 2 outstanding) leaves a half-open connection, to a server whose
        # host froze or whose link dropped without a reset, unnoticed for up to 6 minutes.
        "ping_interval": options.ping_interval,
        "max_outstanding_pings": 2,
    }
    if options.user:
        kwargs["user"] = options.user
        kwargs["password"] = options.password or ""
    if options.token:
        kwargs["token"] = options.token
    if options.creds_file:
        kwargs["user_credentials"] = options.creds_file
    if options.nkey_seed_file:
        kwargs["nkeys_seed"] = options.nkey_seed_file
    if (context := options.ssl_context()) is not None:
        kwargs["tls"] = context
    if options.tls_hostname:
        kwargs["tls_hostname"] = options.tls_hostname

    events = ConnectionEvents()

    async def _quiet(exc: Exception) -> None:
        events.error(exc)

    kwargs["error_cb"] = _quiet
    kwargs["disconnected_cb"] = events.disconnected
    kwargs["reconnected_cb"] = events.reconnected
    kwargs["closed_cb"] = events.closed
    where = ", ".join(redact_servers(options.servers))
    try:
        nc = await nats.connect(**kwargs)
    except (TimeoutError, nats.errors.NoServersError, OSError) as exc:
        raise ConnectionFailed(
            f"cannot connect to NATS at {where}: {_redact(str(exc)) or type(exc).__name__} "
            "(is a nats-server running there? `mesh up` starts one)"
        ) from None
    except Exception as exc:  # nats-py raises a variety of auth and protocol errors here
        raise ConnectionFailed(f"cannot connect to NATS at {where}: {_redact(str(exc))}") from None
    if reconnect:
        nc.options["max_reconnect_attempts"] = -1  # once connected, ride out any outage
    selfcheck.check_connection(nc)
    headers.install(nc)
    setattr(nc, _EVENTS, events)
    events.connection = weakref.ref(nc)
    events.server = _server_of(nc)
    return nc


Listener: TypeAlias = Callable[[], None]


class ConnectionEvents:
    """Who hears of a connection's disconnects, reconnects and close (nats-py takes one callback of
    each, at connect). Listeners are plain functions, called in order inside nats-py's reconnect
    path: they must be quick (set a flag, wake a task) and an error in one is logged, never raised."""

    def __init__(self) -> None:
        self.listeners: dict[str, list[Listener]] = {"disconnected": [], "reconnected": [], "closed": []}
        self.worker_subjects_denied = False  # the server refused a publish to `_mesh.w.>`
        # Set by `connect`, whose connections log losing and regaining their server (weak: the
        # connection holds these events).
        self.connection: weakref.ref[Connection] | None = None
        self.server = ""  # the server last connected to (nats-py forgets it while reconnecting)

    def error(self, exc: Exception) -> None:
        """An asynchronous error from the server (the rest are ignored, as before): a refused
        publish to a worker subject means this user may only call agents through their type subject."""
        text = str(exc)
        if '"_mesh.w.' in text and "permissions violation for publish" in text.lower() and not self.worker_subjects_denied:
            self.worker_subjects_denied = True
            log.warning("connection.worker_subjects_denied", error=text[:300])

    async def disconnected(self) -> None:
        nc = self.connection() if self.connection is not None else None
        if nc is not None and not nc.is_closed:  # nats-py calls this on close too
            log.warning("connection.lost", server=self.server)
        self._call("disconnected")

    async def reconnected(self) -> None:
        nc = self.connection() if self.connection is not None else None
        if nc is not None:
            self.server = _server_of(nc)
            log.info("connection.restored", server=self.server)
        self._call("reconnected")

    async def closed(self) -> None:
        self._call("closed")

    def _call(self, event: str) -> None:
        for listener in list(self.listeners[event]):
            try:
                listener()
            except Exception:
                log.exception("connection.listener_failed", connection_event=event)


_EVENTS = "_mesh_events"
"""The attribute of a connection holding its `ConnectionEvents` (on the object itself: a weak
mapping's value would keep its key alive, since listeners end up referring to the connection)."""


def _events_of(nc: Connection) -> ConnectionEvents | None:
    events = getattr(nc, _EVENTS, None)
    return events if isinstance(events, ConnectionEvents) else None


def worker_subjects_denied(nc: Connection) -> bool:
    """True once the server refused this connection a publish to a worker subject (`_mesh.w.>`)."""
    events = getattr(nc, _EVENTS, None)
    return events is not None and events.worker_subjects_denied


def watch_connection(
    nc: Connection,
    *,
    disconnected: Listener | None = None,
    reconnected: Listener | None = None,
    closed: Listener | None = None,
) -> Callable[[], None]:
    """Call the given functions when `nc` loses its server, has reconnected, or is closed; returns
    a function that stops the calls. A connection made elsewhere than `connect` gets its nats-py
    callbacks chained here (the earlier ones still run first)."""
    events = _events_of(nc)
    if events is None:
        events = ConnectionEvents()
        setattr(nc, _EVENTS, events)
        for event in events.listeners:
            attribute = f"_{event}_cb"
            earlier = getattr(nc, attribute, None)
            setattr(nc, attribute, _chained(earlier, getattr(events, event)))
    wanted = {"disconnected": disconnected, "reconnected": reconnected, "closed": closed}
    added = [(event, fn) for event, fn in wanted.items() if fn is not None]
    for event, fn in added:
        events.listeners[event].append(fn)

    def unwatch() -> None:
        for event, fn in added:
            with contextlib.suppress(ValueError):
                events.listeners[event].remove(fn)

    return unwatch


def _chained(earlier: Callable[[], Awaitable[None]] | None, ours: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    if earlier is None:
        return ours

    async def both() -> None:
        await earlier()
        await ours()

    return both


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def _redact(text: str) -> str:
    return _USERINFO.sub("***@", text)


def _server_of(nc: Connection) -> str:
    url = nc.connected_url
    return _redact(url.geturl()) if url is not None else ""


def redact_servers(servers: tuple[str, ...] | list[str]) -> list[str]:
    """Server URLs fit for logs and error messages: `nats://user:pw@host` becomes `nats://***@host`."""
    return [_redact(s) for s in servers]


async def subscribe(
    nc: Connection, subject: str, *, queue: str = "", cb: Callable[[Message], Awaitable[None]] | None = None
) -> Subscription:
    """A core subscription: messages go to `cb` one at a time, or are read with `next_message`."""
    with map_errors(f"subscribe to {subject[:200]}"):
        return await nc.subscribe(subject, queue=queue, cb=cb)


async def next_message(sub: Subscription, timeout: float | None) -> Message | None:  # noqa: ASYNC109 - the read's own wait, None for none
    """The subscription's next message, or None if none came within `timeout` seconds (None: wait)."""
    with map_errors(f"read {sub.subject[:200]}"):
        try:
            return await sub.next_msg(timeout=timeout)
        except nats.errors.TimeoutError:
            return None


async def unsubscribe(sub: Subscription) -> None:
    """Drop the subscription; a closed connection has dropped it already."""
    try:
        await sub.unsubscribe()
    except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
        pass
    except nats.errors.Error as exc:
        raise map_error(exc, f"unsubscribe from {sub.subject[:200]}") from exc


async def drain(sub: Subscription) -> None:
    """Stop receiving on `sub`, after handling what the server already sent it (unlike
    `unsubscribe`, which drops messages still queued in the client)."""
    with map_errors(f"drain {sub.subject[:200]}"):
        await sub.drain()  # type: ignore[no-untyped-call]
