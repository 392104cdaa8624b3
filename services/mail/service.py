"""The SMTP ingestion service: the server, the processor and the outbox sender on one connection."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from mesh.bus import Connection
from mesh.client import MeshClient
from mesh.tasks import TaskSet
from services.mail.config import MailConfig
from services.mail.outbox import Outbox
from services.mail.processor import Processor
from services.mail.routing import Resolver, address_resolver
from services.mail.server import IngestHandler, smtp_factory
from services.mail.store import MailStore

log = structlog.get_logger("mesh.mail")


class ServedTypes:
    """Which agent types mail may reach: the allowlist, or (when it is empty) the types the mesh serves."""

    def __init__(self, client: MeshClient, allowlist: tuple[str, ...], refresh: float = 5.0) -> None:
        self.client = client
        self.allowlist = frozenset(allowlist)
        self.refresh = refresh
        self._served: frozenset[str] = frozenset()
        self._checked = 0.0

    async def allowed(self, agent_type: str) -> bool:
        if self.allowlist:
            return agent_type in self.allowlist
        now = time.monotonic()
        if (agent_type not in self._served and now - self._checked > 1.0) or now - self._checked > self.refresh:
            self._served = frozenset(info["name"] for info in await self.client.services(wait=0.3))
            self._checked = now
        return agent_type in self._served


class MailService:
    """Accept mail on `config.host:config.port`, process it and send replies. `async with` or start/stop."""

    def __init__(self, nc: Connection, config: MailConfig, *, resolver: Resolver | None = None) -> None:
        self.nc = nc
        self.config = config
        self.resolver = resolver or address_resolver(config.domains)
        self.client = MeshClient(nc, default_timeout=config.call_timeout)
        self.server: asyncio.Server | None = None
        self.handler: IngestHandler
        self._tasks = TaskSet(log, "mail.task_failed")

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> MailService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        store = await MailStore.open(self.nc, stream_limit=self.config.stream_limit, timeout=self.config.store_timeout)
        types = ServedTypes(self.client, self.config.agent_types)
        self.handler = IngestHandler(self.config, store, self.resolver, types.allowed)
        outbox = Outbox(store, self.config)
        if self.config.process:
            self._spawn(Processor(store, self.client, outbox, self.config, self.resolver).serve())
            if self.config.relay is not None:
                self._spawn(outbox.serve_sending())
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(smtp_factory(self.handler, self.config), self.config.host, self.config.port)
        log.info(
            "mail.started",
            listen=f"{self.config.host}:{self.port}",
            domains=list(self.config.domains),
            agent_types=list(self.config.agent_types) or "served",
            process=self.config.process,
            relay=f"{self.config.relay[0]}:{self.config.relay[1]}" if self.config.relay else None,
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for task in await self._tasks.cancel_all():
            log.warning("mail.stop_slow", task=repr(task)[:300], frames=" | ".join(repr(f) for f in task.get_stack(limit=8)))
        log.info("mail.stopped")

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro)
