"""Calling agents from anywhere: scripts, tests, services, and other agents' turns."""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mesh import subjects, wire
from mesh._nats import (
    Connection,
    NatsOptions,
    bind_bucket,
    connect,
    next_message,
    publish,
    request,
    subscribe,
    unsubscribe,
)
from mesh.context import current_turn
from mesh.errors import MeshTimeout
from mesh.methods import check_method
from mesh.tracing import child_traceparent

if TYPE_CHECKING:
    from mesh.schedules import ScheduleInfo

DEFAULT_TIMEOUT = subjects.DEFAULT_TIMEOUT_MS / 1000


class MeshClient:
    """Request/reply, fire-and-forget and events on agent subjects.

    Inside a turn, calls inherit the turn's trace id, deadline and call chain, so a cycle
    (A calls B calls A) fails fast instead of waiting for the deadline.
    """

    def __init__(self, nc: Connection, *, default_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.nc = nc
        self.default_timeout = default_timeout

    @classmethod
    async def connect(cls, options: NatsOptions | str, **kwargs: Any) -> MeshClient:
        """Connect with `options`, or a plain URL (`"nats://127.0.0.1:4222"`, comma separated for several)."""
        return cls(await connect(NatsOptions.from_url(options) if isinstance(options, str) else options), **kwargs)

    @staticmethod
    def new_name(agent_type: str) -> str:
        """A fresh, unique instance name for `agent_type` (like Durable Objects' `newUniqueId()`).

        Nothing is sent: 128 random bits cannot name an instance that exists, and the instance comes
        into being with its first request.
        """
        subjects.check_type(agent_type)
        return secrets.token_hex(16)

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def call(
        self,
        agent_type: str,
        name: str,
        payload: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the deadline travels with the request
        method: str | None = None,
    ) -> Any:
        """Send a request to `(agent_type, name)` and return its decoded JSON reply.

        `method` runs that `@mesh.method` of the instance instead of `on_request` (`Mesh-Method`).
        Raises the callee's error as its typed `MeshError` subclass.
        """
        data = payload if isinstance(payload, bytes) else wire.dumps(payload)
        headers = None if method is None else {subjects.HEADER_METHOD: check_method(method)}
        return wire.loads(await self.call_raw(subjects.agent_subject(agent_type, name), data, timeout=timeout, headers=headers))

    async def call_raw(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the deadline travels with the request
        headers: dict[str, str] | None = None,
    ) -> bytes:
        """Request/reply with raw bytes; `headers` are sent along with the call's context headers."""
        timeout, context = self._outgoing(timeout)
        headers = {**(headers or {}), **context}
        msg = await request(self.nc, subject, data, timeout=timeout, headers=headers)
        err = wire.error_of(msg.headers, msg.data)
        if err is not None:
            raise err
        return msg.data

    async def send(self, agent_type: str, name: str, payload: Any = None) -> None:
        """Fire-and-forget: the instance runs a turn for it; nobody waits for the reply."""
        _, headers = self._outgoing(None)
        data = payload if isinstance(payload, bytes) else wire.dumps(payload)
        await publish(self.nc, subjects.agent_subject(agent_type, name), data, headers)

    async def send_durable(
        self, agent_type: str, name: str, payload: Any = None, *, msg_id: str | None = None, method: str | None = None
    ) -> int:
        """Store a message for the instance in JetStream and return its stream sequence.

        It runs as a turn at least once and takes effect once (`mesh.delivery`); a send retried with
        the same `msg_id` within two minutes is stored only once. Workers create the stream (with
        `MESH_REPLICAS`); a send that finds none creates it with one replica.
        """
        from mesh.durable import publish_durable

        _, headers = self._outgoing(None)
        traceparent = headers.get(subjects.HEADER_TRACEPARENT) or child_traceparent(None)
        ack = await publish_durable(
            self.nc.jetstream(),
            agent_type,
            name,
            payload,
            msg_id=msg_id,
            method=method,
            headers={subjects.HEADER_TRACEPARENT: traceparent},
        )
        return ack.seq

    async def schedule(
        self,
        agent_type: str,
        name: str,
        schedule_id: str,
        payload: Any = None,
        *,
        at: datetime | None = None,
        delay: float | None = None,
        every: float | str | None = None,
        cron: str | None = None,
        method: str | None = None,
    ) -> int:
        """Register (or replace, same id) a schedule delivering `payload` to the instance."""
        from mesh.schedules import put_schedule, schedule_spec

        spec = schedule_spec(at=at, delay=delay, every=every, cron=cron)
        return await put_schedule(self.nc.jetstream(), agent_type, name, schedule_id, spec, payload, method=method)

    async def cancel_schedule(self, agent_type: str, name: str, schedule_id: str) -> bool:
        from mesh.schedules import cancel_schedule

        return await cancel_schedule(self.nc.jetstream(), agent_type, name, schedule_id)

    async def schedules(self, agent_type: str | None = None, name: str | None = None) -> list[ScheduleInfo]:
        from mesh.schedules import list_schedules

        return await list_schedules(self.nc.jetstream(), agent_type, name)

    async def emit(self, agent_type: str, name: str, kind: str, data: Any = None) -> None:
        """Publish an event on `events.<type>.<name>.<kind>`."""
        _, headers = self._outgoing(None)
        await publish(self.nc, subjects.event_subject(agent_type, name, kind), wire.dumps(data), headers)

    async def state(self, agent_type: str, name: str) -> Any | None:
        """The stored state of an instance as JSON, or None if it has never saved any."""
        key = subjects.instance_key(agent_type, name)
        bucket = await bind_bucket(self.nc, subjects.STATE_BUCKET)
        if bucket is None:
            return None  # no worker has started yet
        found = await bucket.get(key)
        return None if found is None else wire.loads(found[0])

    async def services(self, *, wait: float = 0.5) -> list[dict[str, Any]]:
        """Every agent-type service instance that answers `$SRV.INFO` within `wait` seconds."""
        inbox = self.nc.new_inbox()
        replies: list[dict[str, Any]] = []
        sub = await subscribe(self.nc, inbox)
        try:
            await publish(self.nc, "$SRV.INFO", b"", reply=inbox)
            deadline = asyncio.get_running_loop().time() + wait
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                msg = await next_message(sub, left)
                if msg is None:
                    break
                info = wire.loads(msg.data)
                if (info.get("metadata") or {}).get("mesh.kind") == "agent":
                    replies.append(info)
        finally:
            await unsubscribe(sub)
        return replies

    def _outgoing(self, timeout: float | None) -> tuple[float, dict[str, str]]:
        turn = current_turn.get()
        timeout = self.default_timeout if timeout is None else timeout
        headers: dict[str, str] = {}
        if turn is not None:  # outside a turn there is no trace to continue: the callee starts one
            headers[subjects.HEADER_TRACEPARENT] = child_traceparent(turn.traceparent)
            headers[subjects.HEADER_CHAIN] = ",".join(turn.chain)
            left = turn.remaining()
            if left is not None:
                if left <= 0:
                    raise MeshTimeout("the current turn's deadline has already passed")
                timeout = min(timeout, left)
        millis = max(1, int(timeout * 1000))
        if turn is not None or millis != subjects.DEFAULT_TIMEOUT_MS:  # the default goes without saying
            headers[subjects.HEADER_TIMEOUT] = str(millis)
        return timeout, headers
