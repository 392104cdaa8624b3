"""A worker process's runtime: it hosts agent classes and routes each request to where it runs.

Requests for `agents.<type>.<name>` reach one worker of the queue group `mesh`. A stateless agent's
request runs as a turn at once (`mesh.turns.run_turn`). For an instance with state: if this worker
owns it (or claims it now through the directory) the request joins the instance's mailbox
(`mesh.activation`); if another live worker owns it, it is forwarded to that worker's own subject
and the reply relayed. The runtime is the activations' `Host`; they never import this module.

One hop to the owner: a successful reply to a request that did not come straight to its owner
names the owner (`Mesh-Owner`), so that callers (`MeshClient`) address the owner's worker subject
next time. A request a caller sent there (no `Mesh-Hops`) is never forwarded on: a worker that
does not own the instance answers it `unavailable` ("owned by another worker", it did not run),
as it does a forwarded one, and the caller routes it again through the type subject.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from mesh import subjects, wire
from mesh._nats import (
    Bucket,
    Connection,
    Message,
    Service,
    healer_of,
    open_bucket,
    publish,
    publish_now,
    request,
    watch_connection,
)
from mesh._nats.inline import serve_inline
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
MOVED = "the instance is owned by another worker now; the request did not run here; retry"
PROBE_PERIOD = 0.5  # seconds between lease checks of an owner that keeps forwards waiting
# How a request reached this worker (`_dispatch`): through the type's queue group, forwarded by
# another worker, or sent to this worker's own subject by a caller that believes it the owner.
QUEUED, FORWARDED, DIRECT = 0, 1, 2


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
    max_clock_skew: float = 0.5  # seconds a caller's clock may be ahead of ours (`Mesh-Deadline`)


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
        self.forwarded_in = dict.fromkeys(self.agents, 0)  # requests that reached this worker forwarded
        self._owner_header = {subjects.HEADER_OWNER: self.worker_id}
        self.activations: dict[str, Activation] = {}
        self._tasks = TaskSet(self.log)  # turns, forwards, replies, releases: waited for on stop
        self.background = TaskSet(self.log)  # heartbeat, eviction, agents' timers: cancelled on stop
        self._services: list[Service] = []
        self._forward_sub: Any = None
        self._accepting = False
        # Forwards waiting for their owner's reply, by owner, with when each started: the watch
        # (`_serve_forward_watch`) checks the lease of an owner that keeps them waiting.
        self._forwards: dict[str, dict[asyncio.Task[Any], float]] = {}
        self._rerouting: set[asyncio.Task[Any]] = set()
        self._unwatch: Any = None
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
        self.directory.on_renew_failed = self._renew_failed
        await self._take_lease()
        self.turns.log_turns = structlog.get_logger("mesh.runtime").is_enabled_for(logging.DEBUG)
        self.background.spawn(self.directory.serve_heartbeat())
        self.background.spawn(self._serve_eviction())
        self.background.spawn(self._serve_forward_watch())
        # A dropped connection fences the worker at once (a forward to it now finds no responders,
        # and the forwarding worker takes its instances over); the reconnect renews the lease at
        # once, and the renewal bumps the epoch: every instance re-checks ownership before a turn.
        self._unwatch = watch_connection(self.nc, disconnected=self.directory.fence, reconnected=self.directory.renew_now)
        self._accepting = True
        self._forward_sub = await self.nc.subscribe(subjects.worker_wildcard(self.worker_id), cb=self._on_forwarded)
        serve_inline(self._forward_sub, self._route_forwarded)
        for agent_type in self.agents:
            self._services.append(await self._add_service(agent_type))
        await self.nc.flush()
        self.log.info("worker.started", types=sorted(self.agents))

    async def _take_lease(self, patience: float = 10.0) -> None:
        """The first lease, retried through a stream leader election (no responders for a moment)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                await self.directory.renew()
                return
            except (Unavailable, NoResponders) as exc:
                if time.monotonic() >= deadline:
                    raise
                self.log.info("lease.retrying", error=exc.message)
                await asyncio.sleep(0.25)

    def _renew_failed(self, exc: Exception) -> None:
        if isinstance(exc, NoResponders):  # no stream for the lease: did the server lose its store?
            healer_of(self.nc).check_soon()

    async def _add_service(self, agent_type: str) -> Service:
        stats = self.stats[agent_type]

        def stats_data() -> dict[str, int]:
            return {
                "turns": stats.turns,
                "turn_errors": stats.errors,
                "activations": len(self.activations),
                "forwarded_in": self.forwarded_in[agent_type],
            }

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
            inline=self._route_request,
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
        if self._unwatch is not None:
            self._unwatch()
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
            "types": {
                t: {"turns": s.turns, "errors": s.errors, "forwarded_in": self.forwarded_in[t]} for t, s in self.stats.items()
            },
        }

    # -- routing -----------------------------------------------------------------------------

    # Requests are routed straight from the connection's read loop (`serve_inline`); the async
    # callbacks serve when nats-py's internals do not allow that.

    async def _on_request(self, msg: Message) -> None:
        self._route_request(msg)

    async def _on_forwarded(self, msg: Message) -> None:
        self._route_forwarded(msg)

    def _route_request(self, msg: Message) -> None:
        self._dispatch(msg, msg.subject.split(".", 2)[1:], QUEUED)

    def _route_forwarded(self, msg: Message) -> None:
        headers = msg.headers
        via = FORWARDED if headers is not None and subjects.HEADER_HOPS in headers else DIRECT
        self._dispatch(msg, msg.subject.split(".", 4)[3:], via)

    def _dispatch(self, msg: Message, parts: list[str], via: int) -> None:
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
            envelope = Envelope(msg.data, msg.reply or None, headers, None)
            if msg.reply:
                now = time.monotonic()
                envelope.deadline = deadline = _deadline(headers, now, self.options.max_clock_skew)
                if deadline <= now:  # it waited (in a paused worker's socket?) until its caller gave up
                    raise MeshTimeout("the caller's deadline passed before the request was read")
            if cls.state_model is None:
                if subjects.HEADER_REQUEST_ID in headers and self.turns.join_stateless(key, envelope):
                    return  # a retry of a request running here: it gets that turn's outcome
                self.start_now(self._stateless_turn(cls, _decode_name(token), key, envelope))
                return
            if via != DIRECT:
                envelope.tell_owner = True
                if via == FORWARDED:
                    self.forwarded_in[agent_type] += 1
            activation = self.activations.get(key)
            if activation is None:
                activation = Activation(self, cls, subjects.decode_name(token), key)
                self.activations[key] = activation
            activation.deliver(envelope)
        except Exception as exc:
            err = exc if isinstance(exc, MeshError) else AgentError(f"cannot route {msg.subject}: {exc}")
            if isinstance(err, (NameInvalid, PayloadTooLarge, CallCycle, MeshTimeout)):
                self.log.info("request.rejected", subject=msg.subject[:200], code=err.code, error=err.message)
            else:
                self.log.warning("request.rejected", subject=msg.subject[:200], code=err.code, error=err.message)
            if msg.reply:
                self.spawn(self.reply(Outcome(Envelope(b"", msg.reply, {}, None), None, err)))

    def forward(self, activation: Activation, envelope: Envelope) -> None:
        self._tasks.spawn(self._forward(activation, envelope))

    async def _forward(self, activation: Activation, envelope: Envelope) -> None:
        """Send a request to the instance's owner and relay the reply; take the instance over when
        the owner is gone (nobody on its subject: at once) or hangs (its lease expired while we
        waited: `_serve_forward_watch` stops the wait). Never sends a request to an owner twice."""
        owner = activation.owner
        assert owner is not None
        hops = int(envelope.headers.get(subjects.HEADER_HOPS, "0") or 0)
        if envelope.reply is not None and (hops or not envelope.tell_owner):
            # Forwarded here, or sent here by a caller that took us for the owner, but ownership
            # (re-checked) is another worker's. Say so, definitely not run, and the forwarding worker
            # (or the caller) routes it again; a second hop could cross a takeover.
            await self.reply(Outcome(envelope, None, Unavailable(MOVED)))
            return
        if hops >= MAX_HOPS:
            return  # a fire-and-forget message that keeps moving: nobody waits for it
        subject = subjects.worker_subject(owner, activation.key)
        headers = {**envelope.headers, subjects.HEADER_HOPS: str(hops + 1)}
        if envelope.reply is None:
            await self.nc.publish(subject, envelope.data, headers=headers)
            return
        left = self.options.call_timeout if envelope.deadline is None else envelope.deadline - time.monotonic()
        if left <= 0:
            return
        headers[subjects.HEADER_TIMEOUT] = str(max(1, int(left * 1000)))
        # Only a request with an id may run elsewhere once it has reached the owner: the owner may
        # have run and saved it before it hung (or died) without replying, and only the id lets the
        # next owner answer it from the saved record instead of running it again. Without an id the
        # forward waits for the owner's reply (or its own deadline: `timeout`, "may have run").
        task = asyncio.current_task() if subjects.HEADER_REQUEST_ID in headers else None
        waiting: dict[asyncio.Task[Any], float] = {}
        if task is not None:
            waiting = self._forwards.setdefault(owner, waiting)
            waiting[task] = time.monotonic()
        delay = 0.0
        try:
            response = await request(self.nc, subject, envelope.data, timeout=left, headers=headers)
        except NoResponders:
            # Nobody is subscribed on the owner's own subject: the server dropped its connection
            # (a crash, or a lost link: then it fenced itself). Take over now, lease or not.
            response = None
            try:
                await self.directory.take_over(activation.key, owner, activation.dir_revision)
            except MeshError as exc:
                self.log.warning("instance.takeover_failed", key=activation.key, owner=owner, error=exc.message)
                delay = 0.2
        except MeshTimeout:
            return  # the caller's own request timed out at the same moment
        except asyncio.CancelledError:
            if task is None or task not in self._rerouting or task.uncancel() > 0:
                raise
            # The watch found the owner's lease gone while we waited: it hangs, is cut off or died
            # (it fenced itself before the lease expired, so it runs nothing now). Route again: the
            # lease being gone, this worker takes the instance over, and the request runs here,
            # or is answered from the record if the owner had run it.
            response = None
        finally:
            if task is not None:
                self._rerouting.discard(task)
                del waiting[task]
                if not waiting and self._forwards.get(owner) is waiting:
                    del self._forwards[owner]
        if response is not None and not _leaving(response):
            await self.nc.publish(envelope.reply, response.data, headers=response.headers)
            return
        # The owner is gone, hangs, or is going or moved (it did not run the turn). Forget it and
        # route again; once its lease is gone (at once after a graceful stop) we take over.
        self.forget(activation)
        if response is not None:
            delay = 0.02 if _moved(response) else 0.1
        if delay:
            await asyncio.sleep(delay)
        if envelope.deadline is None or time.monotonic() < envelope.deadline:
            self._redeliver(activation, envelope)

    async def _serve_forward_watch(self) -> None:
        """Check the lease of every owner that keeps a forward waiting longer than `PROBE_PERIOD`,
        once per period: a hung or cut-off worker keeps its subscriptions, so nothing else says it
        is gone. Once its lease has expired, its waiting forwards stop waiting and route again."""
        while True:
            await asyncio.sleep(PROBE_PERIOD)
            if not self._forwards:
                continue
            now = time.monotonic()
            for owner, waiting in list(self._forwards.items()):
                if not waiting or now - next(iter(waiting.values())) < PROBE_PERIOD:
                    continue  # the oldest forward to it is young: nothing to suspect yet
                try:
                    if await self.directory.is_alive(owner):
                        continue
                except MeshError as exc:
                    self.log.warning("lease.probe_failed", owner=owner, error=exc.message)
                    continue
                self.log.warning("worker.owner_unresponsive", owner=owner, waiting=len(waiting))
                for task in list(waiting):
                    if task not in self._rerouting:
                        self._rerouting.add(task)
                        task.cancel()

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
        headers: dict[str, str] | None
        if outcome.error is not None:
            body, headers = wire.error_body(outcome.error), wire.error_headers(outcome.error)
        else:
            body, headers = outcome.body or b"null", self._owner_header if outcome.envelope.tell_owner else None
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
        for other in self.turns.leave_stateless(envelope):
            await self.reply(Outcome(other, outcome.body, outcome.error))
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
    """True when the owner answered that it is shutting down or that the instance moved (so it ran nothing)."""
    return _moved(response) is not None


def _moved(response: Message) -> bool | None:
    """True for "moved", False for "shutting down", None for any other reply."""
    headers = response.headers
    if not headers or headers.get(subjects.HEADER_MESH_ERROR) != Unavailable.code:
        return None
    message = headers.get(subjects.HEADER_ERROR)
    return True if message == MOVED else False if message == SHUTTING_DOWN else None


_decode_name = functools.lru_cache(maxsize=4096)(subjects.decode_name)
"""`subjects.decode_name`, remembered for the names a stateless agent is called by again and again."""


def _deadline(headers: dict[str, str], now: float, skew: float) -> float:
    """When the caller stops waiting, on this worker's monotonic clock: `Mesh-Timeout-Ms` from now
    (the default if it is absent or malformed), and no later than the caller's `Mesh-Deadline`
    (epoch milliseconds of its clock) less `skew`, the most its clock may be ahead of ours."""
    value = headers.get(subjects.HEADER_TIMEOUT)
    millis = subjects.DEFAULT_TIMEOUT_MS
    if value:
        try:
            millis = int(value)
        except ValueError:
            pass
    deadline = now + millis / 1000
    wall = headers.get(subjects.HEADER_DEADLINE)
    if wall:
        try:
            deadline = min(deadline, now + int(wall) / 1000 - time.time() - skew)
        except ValueError:
            pass
    return deadline
