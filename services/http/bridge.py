"""The bridge's one connection to the mesh: requests, state reads, discovery and its own buckets.

Stateless by design: everything a second bridge replica must see (idempotent responses, results
of async runs) lives in JetStream KV; this object only caches discovery for a moment.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

import orjson
import structlog

from mesh import subjects
from mesh.bus import Bucket, Connection, find_stream, open_bucket
from mesh.client import MeshClient
from mesh.errors import BadReply
from mesh.methods import check_method
from mesh.recorder import EventsLimits, ensure_events_stream
from mesh.tasks import TaskSet
from services.catalog import AgentType, Catalog
from services.http.config import BridgeConfig

log = structlog.get_logger("services.http")


__all__ = ["AgentType", "Bridge", "check_json"]


class Endable(Protocol):
    def end(self) -> None: ...


class Bridge:
    """Shared by every request of one bridge process. `await start()` before serving."""

    def __init__(self, nc: Connection, config: BridgeConfig) -> None:
        self.nc = nc
        self.config = config
        self.client = MeshClient(nc, default_timeout=config.timeout)
        self.state: Bucket
        self.idempotency: Bucket
        self.runs: Bucket
        self.events_stream: str | None = None
        self.catalog = Catalog(self.client, wait=config.discovery_wait, cache=config.discovery_cache)
        self._tasks = TaskSet(log)
        self.streams: set[Endable] = set()
        """Open live streams that end only when told to (SSE): `end_streams()` tells them."""

    async def start(self) -> None:
        self.state = await open_bucket(self.nc, subjects.STATE_BUCKET)
        self.idempotency = await open_bucket(self.nc, subjects.IDEMPOTENCY_BUCKET, ttl=float(self.config.idempotency_ttl))
        self.runs = await open_bucket(self.nc, subjects.HTTP_RUNS_BUCKET, ttl=float(self.config.runs_ttl))
        self.events_stream = await self._ensure_events_stream()
        log.info("bridge.started", events_stream=self.events_stream, auth=self.config.auth_enabled)

    async def stop(self) -> None:
        await self._tasks.cancel_all()

    def end_streams(self) -> None:
        """End every open live stream now: a stopping server waits for its responses to finish, and
        an SSE response never would (a WebSocket is closed by the server itself)."""
        for stream in list(self.streams):
            stream.end()

    @property
    def max_body(self) -> int:
        """The configured body limit, kept below what NATS will carry."""
        return min(self.config.max_body, max(1, self.nc.max_payload - 4096))

    # -- agents ------------------------------------------------------------------------------

    async def call(
        self,
        agent_type: str,
        name: str,
        body: bytes,
        timeout: float,  # noqa: ASYNC109 - the deadline travels with the request
        *,
        method: str | None = None,
        request_id: str | None = None,
    ) -> bytes:
        """Send one request (to `method`, a `@mesh.method`, if given; with `request_id`, else a fresh
        one); returns the reply's JSON bytes or raises the agent's `MeshError`."""
        headers = None if method is None else {subjects.HEADER_METHOD: check_method(method)}
        subject = subjects.agent_subject(agent_type, name)
        reply = await self.client.call_raw(subject, body, timeout=timeout, headers=headers, request_id=request_id)
        check_json(reply, f"{agent_type}/{name}")
        return reply

    async def read_state(self, agent_type: str, name: str) -> tuple[bytes, int] | None:
        return await self.state.get(subjects.instance_key(agent_type, name))

    async def instances(self, agent_type: str) -> list[str]:
        keys = await self.state.keys(f"{subjects.check_type(agent_type)}.")
        return sorted(subjects.decode_name(key.split(".", 1)[1]) for key in keys)

    async def types(self) -> list[AgentType]:
        """Agent types being served now (cached for `discovery_cache` seconds)."""
        return await self.catalog.types()

    async def supports_approvals(self, agent_type: str) -> bool:
        """True if the type's published request schema admits `{"op": "approvals"}` (LLM agents)."""
        return await self.catalog.supports_approvals(agent_type)

    # -- background work ---------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.spawn(coro)

    async def _ensure_events_stream(self) -> str | None:
        """The stream that keeps `events.>` (so live views resume without gaps), created if missing."""
        js = self.nc.jetstream()
        if not self.config.events_stream:  # configured not to create one: use one if it exists
            return await find_stream(js, "events.>")
        limits = EventsLimits(max_age=float(self.config.events_max_age), max_bytes=256 * 1024 * 1024)
        return await ensure_events_stream(js, limits, name=self.config.events_stream)


def check_json(reply: bytes, source: str) -> None:
    try:
        orjson.loads(reply)
    except orjson.JSONDecodeError as exc:
        raise BadReply(f"the reply of {source} is not JSON: {exc}") from exc
