"""A NATS micro service (the `$SRV` discovery protocol) whose endpoints hand raw messages to the mesh.

Any NATS tool sees one service per agent type and worker (`nats micro ls`): PING, INFO and STATS
answer as nats-py's `nats.micro` would, built from its public response classes. The endpoints
differ on purpose: each is one queue subscription whose callback gets the message itself (no
`Request` wrapper, no timing per request: the runtime only routes it and returns), and a stopping
worker drains them, so what the server already routed here is handled, never dropped. None of it
needs nats-py's private attributes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.micro.service import (
    EndpointInfo,
    EndpointStats,
    ServiceInfo,
    ServicePing,
    ServiceStats,
    ServiceVerb,
    control_subject,
)
from nats.nuid import NUID

from mesh._nats.connection import Connection, Message, Subscription, drain, subscribe, unsubscribe
from mesh._nats.inline import serve_inline
from mesh._nats.outbox import publish

Handler = Callable[[Message], Awaitable[None]]


@dataclass
class _Endpoint:
    name: str
    subject: str
    queue_group: str
    metadata: dict[str, str]
    sub: Subscription | None  # None: described only, served by another endpoint's subscription


class Service:
    """One micro service on `nc`. `await start()`, `await add_endpoint(...)`, then on the way out
    `await drain_endpoints()` (stop taking requests, finish what arrived) and `await stop()`."""

    def __init__(
        self,
        nc: Connection,
        *,
        name: str,
        version: str,
        description: str = "",
        metadata: dict[str, str] | None = None,
        queue_group: str = "q",
        stats_data: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.nc = nc
        self.name = name
        self.version = version
        self.description = description
        self.metadata = metadata or {}
        self.queue_group = queue_group
        self.id = NUID().next().decode()
        self._stats_data = stats_data
        self._endpoints: list[_Endpoint] = []
        self._control: list[Subscription] = []
        self._started = datetime.now(UTC)

    async def start(self) -> None:
        """Answer PING, INFO and STATS for all services, this name, and this instance."""
        handlers = {ServiceVerb.PING: self._ping, ServiceVerb.INFO: self._info, ServiceVerb.STATS: self._stats}
        for verb, handler in handlers.items():
            for name, id_ in ((None, None), (self.name, None), (self.name, self.id)):
                self._control.append(await subscribe(self.nc, control_subject(verb, name, id_), cb=handler))

    async def add_endpoint(
        self,
        *,
        name: str,
        subject: str,
        handler: Handler,
        metadata: dict[str, str] | None = None,
        inline: Callable[[Message], None] | None = None,
    ) -> None:
        """Serve `subject` in the service's queue group; `handler` gets each message, one at a time,
        or `inline` gets it straight from the read loop (`inline.serve_inline`) where it can."""
        sub = await subscribe(self.nc, subject, queue=self.queue_group, cb=handler)
        if inline is not None:
            serve_inline(sub, inline)
        self._endpoints.append(_Endpoint(name, subject, self.queue_group, metadata or {}, sub))

    def describe_endpoint(self, *, name: str, subject: str, metadata: dict[str, str] | None = None) -> None:
        """List an endpoint in INFO and STATS whose requests another endpoint's subscription serves
        (an agent method: the type's subject plus a header); it adds no subscription."""
        self._endpoints.append(_Endpoint(name, subject, self.queue_group, metadata or {}, None))

    async def drain_endpoints(self) -> None:
        """Stop taking requests; handle the ones the server already sent before returning."""
        endpoints, self._endpoints = self._endpoints, []
        for endpoint in endpoints:
            if endpoint.sub is not None:
                await drain(endpoint.sub)

    async def stop(self) -> None:
        """Stop answering discovery (and drop any endpoint still serving)."""
        subs = [e.sub for e in self._endpoints if e.sub is not None] + self._control
        self._endpoints, self._control = [], []
        for sub in subs:
            await unsubscribe(sub)

    def info(self) -> dict[str, Any]:
        endpoints = [EndpointInfo(e.name, e.subject, e.queue_group, e.metadata) for e in self._endpoints]
        return ServiceInfo(self.name, self.id, self.version, self.description, endpoints, self.metadata).to_dict()

    def stats(self) -> dict[str, Any]:
        data = self._stats_data() if self._stats_data is not None else None
        endpoints = [
            EndpointStats(e.name, e.subject, e.queue_group, e.sub.delivered if e.sub else 0, 0, 0, 0, data=data)
            for e in self._endpoints
        ]
        return ServiceStats(self.id, self.name, self.version, self._started, endpoints, self.metadata).to_dict()

    async def _ping(self, msg: Message) -> None:
        await self._respond(msg, ServicePing(self.id, self.name, self.version, self.metadata).to_dict())

    async def _info(self, msg: Message) -> None:
        await self._respond(msg, self.info())

    async def _stats(self, msg: Message) -> None:
        await self._respond(msg, self.stats())

    async def _respond(self, msg: Message, body: dict[str, Any]) -> None:
        if msg.reply:
            await publish(self.nc, msg.reply, json.dumps(body).encode())
