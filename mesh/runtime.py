"""A worker process's runtime: it hosts agent classes and routes each request to where it runs.

Requests for `agents.<type>.<name>` reach one worker of the queue group `mesh`. A stateless agent's
request runs as a turn at once (`mesh.turns.run_turn`). For an instance with state: if this worker
owns it (or claims it now through the directory) the request joins the instance's mailbox
(`mesh.activation`); if another live worker owns it, it is forwarded to that worker's own subject
and the reply relayed. The runtime is the activations' `Host`; they never import this module.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from mesh import subjects, wire
from mesh._nats import Bucket, Connection, Message, Service, open_bucket, publish, publish_now, request
from mesh.activation import Activation, Status
from mesh.agent import Agent
from mesh.client import MeshClient
from mesh.directory import Directory, new_worker_id
from mesh.errors import (
    AgentError,
    CallCycle,
    MeshError,
    MeshTimeout,
    NameInvalid,
    NoResponders,
    PayloadTooLarge,
    Unavailable,
)
from mesh.methods import method_endpoints
from mesh.observe import Observer
from mesh.tasks import TaskSet
from mesh.turns import Envelope, Outcome, Turns, TypeStats, run_turn
from mesh.version import __version__

MAX_HOPS = 3
EVICTION_CHUNK = 256
RETURN_MEMORY_AFTER = 1000  # evictions in one sweep after which freed memory is handed back to the OS
SHUTTING_DOWN = "worker is shutting down; retry"


@dataclass(frozen=True)
class RuntimeOptions:
    """Limits and timings of a worker; defaults suit a laptop."""

    max_request_bytes: int = 256 * 1024
    max_state_bytes: int = 512 * 1024
    idle_timeout: float = 300.0
    lease_ttl: int = 6
    heartbeat: float = 1.0
    max_batch: int = 64
    call_timeout: float = 30.0
    replicas: int = 1  # copies of each bucket this worker creates; 3 on a three-node cluster
    handover_linger: float = 0.5  # seconds a stopping worker still answers forwards, see stop()


class Runtime:
    """Hosts agent classes on one NATS connection. Use `async with Runtime(nc, [Counter]) as rt:`."""

    def __init__(
        self,
        nc: Connection,
        agents: Iterable[type[Agent[Any]]],
        *,
        options: RuntimeOptions | None = None,
        worker_id: str | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.nc = nc
        self.options = options or RuntimeOptions()
        self.worker_id = worker_id or new_worker_id()
        self.agents: dict[str, type[Agent[Any]]] = {}
        for cls in agents:
            subjects.check_type(getattr(cls, "type", ""))
            if cls.type in self.agents:
                raise ValueError(f"two agent classes use type {cls.type!r}")
            self.agents[cls.type] = cls
        self.client = MeshClient(nc, default_timeout=self.options.call_timeout)
        self.log = structlog.get_logger("mesh.runtime").bind(worker=self.worker_id)
        self.observers = list(observers)
        self.turns = Turns(
            self.worker_id,
            self.log,
            self.observers,
            self.agents,
            max_batch=self.options.max_batch,
            max_state_bytes=self.options.max_state_bytes,
        )
        self.stats: dict[str, TypeStats] = self.turns.stats
        self.activations: dict[str, Activation] = {}
        self._tasks = TaskSet(self.log)  # turns, forwards, replies, releases: waited for on stop
        self.background = TaskSet(self.log)  # heartbeat, eviction, agents' timers: cancelled on stop
        self._services: list[Service] = []
        self._forward_sub: Any = None
        self._accepting = False
        self.directory: Directory
        self.state: Bucket

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        buckets = {
            name: await open_bucket(self.nc, name, replicas=self.options.replicas)
            for name in (subjects.STATE_BUCKET, subjects.DIRECTORY_BUCKET, subjects.WORKERS_BUCKET)
        }
        self.state = buckets[subjects.STATE_BUCKET]
        self.directory = Directory(
            buckets[subjects.DIRECTORY_BUCKET],
            buckets[subjects.WORKERS_BUCKET],
            self.worker_id,
            lease_ttl=self.options.lease_ttl,
            heartbeat=self.options.heartbeat,
        )
        await self.directory.renew()
        self.turns.log_turns = structlog.get_logger("mesh.runtime").is_enabled_for(logging.DEBUG)
        self.background.spawn(self.directory.serve_heartbeat())
        self.background.spawn(self._serve_eviction())
        self._accepting = True
        self._forward_sub = await self.nc.subscribe(subjects.worker_wildcard(self.worker_id), cb=self._on_forwarded)
        for agent_type in self.agents:
            self._services.append(await self._add_service(agent_type))
        await self.nc.flush()
        self.log.info("worker.started", types=sorted(self.agents))

    async def _add_service(self, agent_type: str) -> Service:
        stats = self.stats[agent_type]

        def stats_data() -> dict[str, int]:
            return {"turns": stats.turns, "turn_errors": stats.errors, "activations": len(self.activations)}

        service = Service(
            self.nc,
            name=agent_type,
            version=__version__,
            description=f"agent-mesh agent type {agent_type}",
            metadata={"mesh.kind": "agent", "mesh.type": agent_type, "mesh.worker": self.worker_id},
            queue_group="mesh",
            stats_data=stats_data,
        )
        await service.start()
        await service.add_endpoint(
            name="request",
            subject=subjects.agent_wildcard(agent_type),
            handler=self._on_request,
            metadata=endpoint_schemas(self.agents[agent_type]),
        )
        for name, metadata in method_endpoints(self.agents[agent_type]).items():  # served by `request`, with Mesh-Method
            service.describe_endpoint(name=name, subject=subjects.agent_wildcard(agent_type), metadata=metadata)
        return service

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking requests, let queued turns finish within `grace`, release every instance.

        Order matters on a cluster, where a subscription's removal reaches the other servers a
        moment after it happens here: (1) stop taking requests and drain the agent subscriptions
        (what was already routed here is answered `unavailable`, never dropped); (2) let queued
        turns, forwards and replies finish; (3) drop the lease, handing every instance over;
        (4) keep the forwarding subscription for `handover_linger` seconds, answering `unavailable`
        there too, so workers still forwarding to us re-route now (the lease being gone, they take
        the instances over) instead of sending into a subscription that has just disappeared.
        """
        if not self._accepting:
            return
        self._accepting = False
        deadline = time.monotonic() + grace
        await self._drain_services()
        await self._wait_tasks(deadline)
        owned = sum(1 for a in self.activations.values() if a.status is Status.OWNED)
        await self.background.cancel_all()  # the heartbeat must not renew the lease we are about to drop
        try:
            # One delete hands over every instance: a directory entry naming a worker without a
            # lease is taken over by the next worker that needs it.
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                await self.directory.retire()
        except Exception as exc:  # NATS gone: our lease simply expires and others take over then
            self.log.warning("worker.retire_failed", error=str(exc) or type(exc).__name__)
        if owned:
            await asyncio.sleep(self.options.handover_linger)
        await self._drain(self._forward_sub)
        await self._wait_tasks(min(deadline, time.monotonic() + 1.0))
        await self._tasks.cancel_all()
        self.activations.clear()
        self.log.info("worker.stopped", handed_over=owned)

    async def _wait_tasks(self, deadline: float) -> None:
        """Wait (until `deadline`) for the turns, releases, forwards and replies in flight: woken
        when the last one ends (every mailbox that waits on anything is one of these tasks)."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._tasks.wait_empty()
        except TimeoutError:
            pass

    async def _drain_services(self) -> None:
        """Unsubscribe the agent endpoints, but first handle what the server already routed here
        (answered `unavailable` from now on, so callers retry elsewhere) instead of dropping it,
        as a plain unsubscribe does with messages still queued in the client; then stop answering
        discovery."""
        for service in self._services:
            for step in (service.drain_endpoints, service.stop):
                try:
                    await step()
                except MeshError as exc:  # NATS is gone: nothing more can arrive anyway
                    self.log.warning("worker.drain_failed", code=exc.code, error=exc.message)

    async def _drain(self, sub: Any) -> None:
        if sub is None:
            return
        try:
            await sub.drain()
        except Exception as exc:  # NATS is gone: nothing more can arrive anyway
            self.log.warning("worker.drain_failed", error=str(exc) or type(exc).__name__)

    def ready(self) -> bool:
        """True while this worker takes requests: started, connected, its lease held."""
        return self._accepting and self.nc.is_connected and not self.directory.fenced()

    def statistics(self) -> dict[str, Any]:
        owned = sum(1 for a in self.activations.values() if a.status is Status.OWNED)
        return {
            "worker": self.worker_id,
            "activations": len(self.activations),
            "owned": owned,
            "types": {t: {"turns": s.turns, "errors": s.errors} for t, s in self.stats.items()},
        }

    # -- routing -----------------------------------------------------------------------------

    async def _on_request(self, msg: Message) -> None:
        self._dispatch(msg, msg.subject.split(".", 2)[1:])

    async def _on_forwarded(self, msg: Message) -> None:
        self._dispatch(msg, msg.subject.split(".", 4)[3:])

    def _dispatch(self, msg: Message, parts: list[str]) -> None:
        """Route one message; never raises, so the subscription keeps serving."""
        try:
            agent_type, token = parts
            cls = self.agents[agent_type]
            key = f"{agent_type}.{token}"
            headers = msg.headers or {}
            if len(msg.data) > self.options.max_request_bytes:
                raise PayloadTooLarge(f"request of {len(msg.data)} bytes is over the limit of {self.options.max_request_bytes}")
            chain = headers.get(subjects.HEADER_CHAIN)
            if chain and key in chain.split(","):
                name = subjects.decode_name(token)
                raise CallCycle(f"{agent_type}/{name} is already waiting in this call chain: {chain}")
            if not self._accepting:
                raise Unavailable(SHUTTING_DOWN)
            envelope = Envelope(msg.data, msg.reply or None, headers, _deadline(headers, msg.reply))
            if cls.state_model is None:
                self.start_now(self._stateless_turn(cls, subjects.decode_name(token), key, envelope))
                return
            activation = self.activations.get(key)
            if activation is None:
                activation = Activation(self, cls, subjects.decode_name(token), key)
                self.activations[key] = activation
            activation.deliver(envelope)
        except Exception as exc:
            err = exc if isinstance(exc, MeshError) else AgentError(f"cannot route {msg.subject}: {exc}")
            if isinstance(err, (NameInvalid, PayloadTooLarge, CallCycle)):
                self.log.info("request.rejected", subject=msg.subject[:200], code=err.code, error=err.message)
            else:
                self.log.warning("request.rejected", subject=msg.subject[:200], code=err.code, error=err.message)
            if msg.reply:
                self.spawn(self.reply(Outcome(Envelope(b"", msg.reply, {}, None), None, err)))

    def forward(self, activation: Activation, envelope: Envelope) -> None:
        self._tasks.spawn(self._forward(activation, envelope))

    async def _forward(self, activation: Activation, envelope: Envelope) -> None:
        owner = activation.owner
        assert owner is not None
        hops = int(envelope.headers.get(subjects.HEADER_HOPS, "0") or 0)
        if hops >= MAX_HOPS:
            await self.reply(Outcome(envelope, None, Unavailable("instance ownership is moving; retry")))
            return
        subject = subjects.worker_subject(owner, activation.key)
        headers = {**envelope.headers, subjects.HEADER_HOPS: str(hops + 1)}
        if envelope.reply is None:
            await self.nc.publish(subject, envelope.data, headers=headers)
            return
        left = self.options.call_timeout if envelope.deadline is None else envelope.deadline - time.monotonic()
        if left <= 0:
            return
        headers[subjects.HEADER_TIMEOUT] = str(max(1, int(left * 1000)))
        try:
            response = await request(self.nc, subject, envelope.data, timeout=left, headers=headers)
        except NoResponders:
            response = None
        except MeshTimeout:
            return  # the caller's own request timed out at the same moment
        if response is None or _leaving(response):
            # The owner is gone or going (it did not run the turn). Forget it and route again;
            # once its lease is gone (at once after a graceful stop) we take over.
            if self.activations.get(activation.key) is activation:
                del self.activations[activation.key]
            await asyncio.sleep(0.2 if response is None else 0.1)
            if envelope.deadline is None or time.monotonic() < envelope.deadline:
                self._redeliver(activation, envelope)
            return
        await self.nc.publish(envelope.reply, response.data, headers=response.headers)

    def _redeliver(self, old: Activation, envelope: Envelope) -> None:
        activation = self.activations.get(old.key)
        if activation is None:
            activation = Activation(self, old.agent_cls, old.name, old.key)
            self.activations[old.key] = activation
        activation.deliver(envelope)

    async def reply(self, outcome: Outcome) -> None:
        reply = outcome.envelope.reply
        if not reply:
            return
        if outcome.error is not None:
            body, headers = wire.error_body(outcome.error), wire.error_headers(outcome.error)
        else:
            body, headers = outcome.body or b"null", None
        try:
            if not publish_now(self.nc, reply, body, headers):
                await publish(self.nc, reply, body, headers)  # the outgoing buffer is full: wait for it
        except PayloadTooLarge:
            err = PayloadTooLarge("the reply is over NATS max_payload")
            await publish(self.nc, reply, wire.error_body(err), wire.error_headers(err))

    def forget(self, activation: Activation) -> None:
        if self.activations.get(activation.key) is activation:
            del self.activations[activation.key]

    # -- turns -------------------------------------------------------------------------------

    async def _stateless_turn(self, cls: type[Agent[Any]], name: str, key: str, envelope: Envelope) -> None:
        outcome = await run_turn(self.turns, cls(name, None, self.client), key, envelope)
        await self.reply(outcome)  # first: observers must not delay the caller
        if self.turns.log_turns or self.turns.observers:
            self.turns.finished(outcome)

    # -- background --------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro)

    def start_now(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        """Run `coro` now up to its first wait, then as a task (`TaskSet.start`)."""
        return self._tasks.start(coro)

    async def _serve_eviction(self) -> None:
        period = max(0.05, min(self.options.idle_timeout / 4, 30.0))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            idle = [a for a in self.activations.values() if a.idle_since(now) > self.options.idle_timeout]
            for start in range(0, len(idle), EVICTION_CHUNK):
                # In chunks, so evicting 100,000 instances never holds 100,000 release tasks at once;
                # tasks of the worker's set, so that stop() waits for the releases under way.
                await asyncio.gather(*(self._tasks.spawn(a.release()) for a in idle[start : start + EVICTION_CHUNK]))
            if len(idle) >= RETURN_MEMORY_AFTER:
                del idle
                self.activations = dict(self.activations)  # a dict never shrinks as entries go
                return_memory()


def endpoint_schemas(cls: type[Agent[Any]]) -> dict[str, str]:
    """JSON Schemas of the request and reply, published in `$SRV.INFO` so gateways can describe them."""
    found: dict[str, str] = {}
    if cls.__doc__:
        found["mesh.description"] = " ".join(cls.__doc__.split())[:500]
    for key, adapter in (("mesh.request_schema", cls.request_adapter), ("mesh.reply_schema", cls.reply_adapter)):
        try:
            found[key] = wire.dumps(adapter.json_schema()).decode()
        except Exception:  # a type pydantic cannot describe: gateways fall back to "any JSON"
            continue
    return found


def return_memory() -> None:
    """Give memory freed by a large eviction back to the operating system.

    CPython frees the objects at once, but glibc keeps the freed heap for reuse: without a trim a
    worker that once held 100,000 instances stays at its peak size forever.
    """
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


_malloc_trim = _find_malloc_trim()


def _leaving(response: Message) -> bool:
    """True when the owner answered that it is shutting down (so it ran nothing)."""
    headers = response.headers or {}
    return headers.get(subjects.HEADER_MESH_ERROR) == Unavailable.code and headers.get(subjects.HEADER_ERROR) == SHUTTING_DOWN


def _deadline(headers: dict[str, str], reply: str | None) -> float | None:
    """When the caller stops waiting: `Mesh-Timeout-Ms` from now, the default if it is absent or
    malformed, never for a message nobody waits for."""
    if not reply:
        return None
    value = headers.get(subjects.HEADER_TIMEOUT)
    millis = subjects.DEFAULT_TIMEOUT_MS
    if value:
        try:
            millis = int(value)
        except ValueError:
            pass
    return time.monotonic() + millis / 1000
