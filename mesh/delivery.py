"""Delivering durable messages: pull them from MESH_DURABLE and run each as a turn of its instance.

Each agent type has `DURABLE_PARTITIONS` durable pull consumers `mesh_<type>_<p>` in the priority
group `mesh` with policy `pinned_client` (`mesh._nats.pinned`): every worker hosting the type
pulls, but JetStream hands a partition's messages to one of them at a time, in batches of up to
`BATCH`, up to `MAX_ACK_PENDING` unacknowledged. The puller keeps them in per-instance lanes, in
stored order, and hands each instance its messages itself, so instances run in parallel while one
instance's messages run in stored order:

- an instance this worker owns (or claims now) gets up to `WINDOW` messages straight into its
  mailbox, in process: no NATS request, and they share the instance's group commit (one state
  write for a batch of turns). Their outcomes come back in process (`mesh.handoff`);
- an instance another worker owns gets one request at a time on `agents.<type>.<token>`, like any
  caller's, carrying `Mesh-Msg-Id`;
- a stateless type gets one request at a time per instance, the same way.

A message is acked once its turn's state was saved (its reply says so). When a message fails, the
instance's later messages wait: those already in its mailbox are handed back without running
(the mailbox refuses them, `mesh.activation`), and the failed one is retried here, after its
backoff, before any later one; other instances keep flowing. A redelivery of a message whose
effect is already in the saved state is answered from the processed-ids record (`mesh.dedupe`).

Failures: a request error (bad JSON, schema) cannot succeed on retry and goes to the dead letters
at once; a failed turn (handler error, invalid state, timeout) is retried with backoff and goes to
the dead letters after `max_attempts` attempts; an unavailable mesh (failover, shutdown, conflict)
is retried with backoff without limit, since the turn did not take effect.

Failover: messages held by a worker that died come back after `ack_wait`, in no particular order,
to whichever worker is pinned next. A newly pinned worker therefore dispatches nothing until it
holds every message of the partition that is still unacknowledged (`_settle`), then sorts each
lane by stream sequence: order holds across crashes. A worker that stops unpins after giving its
undelivered messages back, so the next one takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from mesh import deadletters, subjects, wire
from mesh._nats import JetStream, Message, request
from mesh._nats.pinned import ACK, PROGRESS, PinnedConsumer, delivery_of, nak_delay, settle, settle_later
from mesh.activation import Activation, Status
from mesh.durable import DurableOptions, ensure_streams
from mesh.errors import (
    AgentError,
    ConnectionFailed,
    MeshError,
    MeshTimeout,
    RequestError,
    StateError,
    Unavailable,
)
from mesh.handoff import MOVED_HERE, NOT_RUN, expect, forget
from mesh.metrics import DEAD_LETTERS, DURABLE_BACKLOG
from mesh.recorder import FlightRecorder
from mesh.tasks import TaskSet
from mesh.tracing import child_traceparent, trace_id
from mesh.turns import Envelope, Outcome

if TYPE_CHECKING:
    from mesh.runtime import Runtime

_T = TypeVar("_T")

BATCH = 256
"""Messages asked for per pull."""
MAX_ACK_PENDING = 1024
"""Messages of one partition out at once (held by its puller, not yet acknowledged)."""
WINDOW = 64
"""Messages of one instance in its mailbox at once: one group commit's worth (`max_batch`). A crash
may leave that many applied and not acked (a batch's acks leave on the connection before the next
batch's state write), so it stays below what the processed-ids record keeps (`mesh.dedupe.DEFAULT_KEEP`)."""


@dataclass
class DeliveryStats:
    delivered: int = 0
    retried: int = 0
    dead: int = 0


def consumer_name(agent_type: str, partition: int) -> str:
    return f"mesh_{agent_type}_{partition}"


class _Held:
    """One message this worker holds: waiting in its lane, or handed to its instance."""

    __slots__ = ("msg", "seq", "msg_id", "attempts", "refusals", "done", "error", "reply", "lane", "traceparent", "since")

    def __init__(self, msg: Message, seq: int, msg_id: str, attempts: int, lane: _Lane) -> None:
        self.msg = msg
        self.seq = seq
        self.msg_id = msg_id
        self.attempts = attempts  # turns tried (JetStream's deliveries, then our retries)
        self.refusals = 0  # tries the mesh refused without running (unavailable): never dead-lettered
        self.done = False
        self.error: MeshError | None = None
        self.reply = ""
        self.lane = lane
        self.traceparent: str | None = None  # a schedule firing's: its event and its turn share the trace
        self.since = 0.0  # when JetStream last heard that it is being worked on (delivery or progress)


class _Lane:
    """One instance's held messages in one partition, in stored order."""

    __slots__ = ("token", "part", "waiting", "out", "busy", "remote", "failing")

    def __init__(self, token: str, part: _Partition) -> None:
        self.token = token
        self.part = part
        self.waiting: deque[_Held] = deque()  # not yet handed over, by stream sequence
        self.out: list[_Held] = []  # handed over, in order, not yet settled
        self.busy = False  # waiting out a retry's backoff, or burying a dead letter
        self.remote = False  # `out` went as requests (one at a time), not into a local mailbox
        self.failing = False  # one of `out` failed: nothing more is handed over until it is retried


class _Partition:
    __slots__ = ("agent_type", "consumer", "lanes", "held", "settling", "pending", "release")

    def __init__(self, agent_type: str) -> None:
        self.agent_type = agent_type
        self.consumer: PinnedConsumer
        self.lanes: dict[str, _Lane] = {}
        self.held: dict[int, _Held] = {}  # stream sequence -> what this worker holds
        self.settling = False  # newly pinned: collecting what an earlier puller left unacked
        self.pending = 0  # messages the consumer had left to deliver, as of the last one
        self.release = False  # this worker holds more than its share: give the partition away


class DurableDelivery:
    """Runs the pull loops of one worker. `start()` after the runtime started, `stop()` before it stops."""

    def __init__(self, runtime: Runtime, options: DurableOptions | None = None) -> None:
        self.runtime = runtime
        self.options = options or DurableOptions()
        self.stats = DeliveryStats()
        self.log = runtime.log.bind(component="durable")
        self._js: JetStream = runtime.nc.jetstream(timeout=5.0)
        self._tasks = TaskSet(self.log, "durable.loop_failed")  # pull loops, keep-alive
        self._work = TaskSet(self.log, "durable.delivery_failed")  # requests, retries, dead letters
        self._parts: list[_Partition] = []
        self._local: dict[str, _Held] = {}  # local reply id -> the message handed to a mailbox
        self._stopping = False
        self._idle = asyncio.Event()  # set while nothing is handed over and unsettled
        self._idle.set()
        self._out = 0
        self._now = time.monotonic()  # refreshed by the pull loops: fine enough for progress signals
        self._pin_timeout = 0.0
        self._recorders = [o for o in runtime.observers if isinstance(o, FlightRecorder)]

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await ensure_streams(self._js, self.options.replicas)
        ack_wait = int(self.options.ack_wait * 1e9)
        # A dead puller's partitions move after this; waiting longer than its messages' ack_wait
        # gains nothing (the next puller waits for them anyway, `_settle`), so at most 5 s.
        self._pin_timeout = pin_timeout = max(2 * self.options.fetch_wait + 1.0, min(self.options.ack_wait, 5.0))
        for agent_type in self.runtime.agents:
            for partition in self.options.partitions:
                name = consumer_name(agent_type, partition)
                part = _Partition(agent_type)
                config = {
                    "durable_name": name,
                    "name": name,
                    "description": f"agent-mesh durable delivery to {agent_type}, partition {partition}",
                    "filter_subject": subjects.durable_partition_filter(agent_type, partition),
                    "ack_policy": "explicit",
                    "deliver_policy": "all",
                    "max_ack_pending": MAX_ACK_PENDING,
                    "ack_wait": ack_wait,
                    "max_deliver": -1,
                    "priority_timeout": int(pin_timeout * 1e9),
                }
                part.consumer = PinnedConsumer(
                    self.runtime.nc,
                    subjects.DURABLE_STREAM,
                    config,
                    functools.partial(self._on_message, part),
                    functools.partial(self._on_pinned, part),
                )
                await self._until_answered(name, part.consumer.create)
                self._parts.append(part)
                self._tasks.spawn(self._serve(part))
        self._tasks.spawn(self._keep_alive())
        self._tasks.spawn(self._balance())
        self.log.info("durable.started", consumers=len(self._parts))

    async def _until_answered(self, what: str, create: Callable[[], Awaitable[_T]]) -> _T:
        """Create `what`, retrying while JetStream does not answer: the worker already serves turns,
        so a pause, a stalled link or a leader election here must delay durable delivery, not end
        the process. Creating a durable consumer with the same config again is harmless."""
        delay = 0.5
        while True:
            try:
                return await create()
            except Unavailable as err:
                self.log.warning("durable.start_retrying", consumer=what, error=err.message, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop pulling; let the messages handed over finish within `grace` (and be acked); give
        the rest back and unpin, so another worker takes the partitions over at once.

        A message whose turn is still under way when `grace` ends stays unacked: JetStream
        redelivers it after `ack_wait`, as after a crash (the next puller waits for it, `_settle`).
        """
        if self._stopping:
            return
        self._stopping = True
        await self._tasks.cancel_all()  # pull loops and keep-alive: nothing to finish there
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
        await self._work.cancel_all()  # retries waiting out their backoff, requests still out
        nc = self.runtime.nc
        for part in self._parts:
            for lane in part.lanes.values():
                for held in lane.waiting:  # in stored order: back to the stream, to be redelivered now
                    settle(nc, held.msg, nak_delay(0))
            with contextlib.suppress(MeshError):
                await nc.flush()
                await part.consumer.unpin()
            with contextlib.suppress(MeshError):
                await part.consumer.close()
        for reply in self._local:
            forget(reply)
        self._local.clear()
        self.log.info("durable.stopped", delivered=self.stats.delivered, dead=self.stats.dead)

    def statistics(self) -> dict[str, int]:
        return {"delivered": self.stats.delivered, "retried": self.stats.retried, "dead": self.stats.dead}

    # -- pulling -------------------------------------------------------------------------------

    async def _serve(self, part: _Partition) -> None:
        consumer = part.consumer
        while True:
            if part.release:
                part.release = False
                if await self._release(part):  # then let a waiting puller take it, not our next pull
                    await asyncio.sleep(self._pin_timeout + self.options.fetch_wait)
                continue
            self._now = started = time.monotonic()
            try:
                how = await consumer.pull(BATCH, self.options.fetch_wait)
            except ConnectionFailed:
                return
            except MeshError as exc:  # leader election, reconnect: wait and pull again
                self.log.debug("durable.fetch_failed", agent_type=part.agent_type, error=exc.message)
                await asyncio.sleep(0.5)
                continue
            if how == "423":  # another worker holds the partition now: what it will get is not ours
                self._lost_pin(part)
            self._observe_backlog(part)
            if how not in ("full", "408") and time.monotonic() - started < 0.05:
                await asyncio.sleep(0.1)  # refused at once (409 ...): do not spin

    def _on_pinned(self, part: _Partition) -> None:
        """This worker was pinned: hand nothing over until it holds what an earlier puller left."""
        part.settling = True
        self._tasks.spawn(self._settle(part))

    async def _settle(self, part: _Partition) -> None:
        """Wait until every unacknowledged message of the partition is held here (an earlier
        puller's come back after its `ack_wait`), then hand them over in stored order. Without
        this, a dead puller's message 1 could be redelivered after message 2 of the same instance
        had already run here."""
        deadline = time.monotonic() + 2 * self.options.ack_wait + 5.0
        waited = False
        while time.monotonic() < deadline:
            try:
                if await part.consumer.ack_pending() <= len(part.held):
                    break
            except MeshError as exc:
                self.log.debug("durable.settle_check_failed", error=exc.message)
            waited = True
            await asyncio.sleep(0.1)
        else:
            self.log.warning("durable.settle_timed_out", agent_type=part.agent_type, consumer=part.consumer.name)
        if waited:
            self.log.info("durable.taken_over", agent_type=part.agent_type, consumer=part.consumer.name, held=len(part.held))
        part.settling = False
        for lane in list(part.lanes.values()):
            if len(lane.waiting) > 1:
                lane.waiting = deque(sorted(lane.waiting, key=lambda h: h.seq))
            self._pump(lane)

    async def _balance(self) -> None:
        """Hold no more than a fair share of a type's partitions: the first worker to pull gets
        every pin, so one that holds more than (partitions / pullers) gives one away per period.
        Pullers are counted from the pull requests waiting on a partition (every worker keeps one)."""
        while True:
            await asyncio.sleep(self.options.balance_every)
            for agent_type in self.runtime.agents:
                parts = [p for p in self._parts if p.agent_type == agent_type]
                pinned = [p for p in parts if p.consumer.pin is not None and not p.settling]
                if len(pinned) < 2:
                    continue
                try:
                    pullers = await pinned[0].consumer.pullers()
                except MeshError:
                    continue
                if len(pinned) > -(-len(parts) // max(1, pullers)):
                    min(pinned, key=lambda p: len(p.held)).release = True

    async def _release(self, part: _Partition) -> bool:
        """Give away a partition this worker is pinned on (no pull of ours is out): hand nothing more
        over, let what was handed over finish and be acked, give the rest back in order, unpin.
        False (and nothing changed) if its messages do not finish within `turn_timeout`."""
        if part.consumer.pin is None or part.settling:
            return False
        part.settling = True
        deadline = time.monotonic() + self.options.turn_timeout
        while any(lane.out or lane.busy for lane in part.lanes.values()):
            if time.monotonic() > deadline:
                part.settling = False
                for lane in list(part.lanes.values()):
                    self._pump(lane)
                return False
            await asyncio.sleep(0.05)
        self._lost_pin(part)
        try:
            await part.consumer.unpin()
        except MeshError as exc:
            self.log.warning("durable.unpin_failed", consumer=part.consumer.name, error=exc.message)
        part.settling = False
        self.log.info("durable.partition_released", agent_type=part.agent_type, consumer=part.consumer.name)
        return True

    def _lost_pin(self, part: _Partition) -> None:
        """Forget the messages not yet handed over (the new puller gets them); those under way finish."""
        nc = self.runtime.nc
        for lane in list(part.lanes.values()):
            while lane.waiting:
                held = lane.waiting.popleft()
                part.held.pop(held.seq, None)
                settle(nc, held.msg, nak_delay(0))
            self._drop_if_empty(lane)

    def _on_message(self, part: _Partition, msg: Message) -> None:
        delivered, seq, part.pending = delivery_of(msg)
        held = part.held.get(seq)
        if held is not None:  # redelivered while we hold it (a stall past ack_wait): ack the newest
            held.msg = msg
            return
        token = msg.subject.split(".", 3)[3]
        lane = part.lanes.get(token)
        if lane is None:
            lane = part.lanes[token] = _Lane(token, part)
        headers = msg.headers or {}
        msg_id = headers.get(subjects.HEADER_NATS_MSG_ID) or f"seq:{seq}"
        held = _Held(msg, seq, msg_id, delivered, lane)
        held.since = self._now
        part.held[seq] = held
        waiting = lane.waiting
        if waiting and waiting[-1].seq > seq:  # a redelivery behind later messages: keep stored order
            waiting.append(held)
            lane.waiting = deque(sorted(waiting, key=lambda h: h.seq))
        else:
            waiting.append(held)
        if subjects.HEADER_NATS_SCHEDULER in headers:
            held.traceparent = child_traceparent(headers.get(subjects.HEADER_TRACEPARENT))
            self._observe_schedule(part.agent_type, token, headers[subjects.HEADER_NATS_SCHEDULER], msg_id, held.traceparent)
        if not part.settling:
            self._pump(lane)

    # -- handing messages over -----------------------------------------------------------------

    def _pump(self, lane: _Lane) -> None:
        """Hand the lane's next messages to its instance, as many as may be out at once."""
        if lane.busy or lane.failing or self._stopping or lane.part.settling or not lane.waiting:
            return
        part = lane.part
        runtime = self.runtime
        cls = runtime.agents[part.agent_type]
        key = f"{part.agent_type}.{lane.token}"
        activation = runtime.activations.get(key)
        if cls.state_model is None or (activation is not None and activation.status is Status.REMOTE):
            if not lane.out:
                held = lane.waiting.popleft()
                lane.out.append(held)
                lane.remote = True
                self._handed(1)
                self._work.spawn(self._request(held))
            return
        if lane.remote and lane.out:
            return  # a request is out: the next one follows its reply
        if activation is None:
            try:
                name = subjects.decode_name(lane.token)
            except MeshError as err:
                held = lane.waiting.popleft()
                lane.out.append(held)
                self._handed(1)
                self._settled(held, err)
                return
            activation = Activation(runtime, cls, name, key)
            runtime.activations[key] = activation
        lane.remote = False
        # A mailbox may run a turn (and settle it here) before `deliver` returns: re-check each time.
        while lane.waiting and len(lane.out) < WINDOW and not (lane.busy or lane.failing):
            held = lane.waiting.popleft()
            lane.out.append(held)
            self._handed(1)
            held.reply = reply = expect(self._on_local_reply)
            self._local[reply] = held
            activation.deliver(Envelope(held.msg.data, reply, self._headers(held), None))

    def _headers(self, held: _Held) -> dict[str, str]:
        headers = held.msg.headers or {}
        out = {subjects.HEADER_MSG_ID: held.msg_id}
        # The turn is a span of its own, a child of this one: the sender's (or, for a schedule's
        # firing, the one its event named). Without one, the turn starts a trace of its own.
        if traceparent := held.traceparent or headers.get(subjects.HEADER_TRACEPARENT):
            out[subjects.HEADER_TRACEPARENT] = traceparent
        if method := headers.get(subjects.HEADER_METHOD):
            out[subjects.HEADER_METHOD] = method
        return out

    async def _request(self, held: _Held) -> None:
        """Send one message to the instance's owner (another worker) and settle it by the reply."""
        part = held.lane.part
        headers = self._headers(held)
        headers[subjects.HEADER_TIMEOUT] = str(int(self.options.turn_timeout * 1000))
        try:
            reply = await request(
                self.runtime.nc,
                f"agents.{part.agent_type}.{held.lane.token}",
                held.msg.data,
                timeout=self.options.turn_timeout,
                headers=headers,
            )
            error = wire.error_of(reply.headers, reply.data)
        except MeshError as exc:
            error = exc
        self._settled(held, error)

    def _on_local_reply(self, outcome: Outcome) -> None:
        """The outcome of a turn of a message handed straight to a mailbox (`mesh.handoff`)."""
        held = self._local.pop(outcome.envelope.reply or "", None)
        if held is not None:
            self._settled(held, outcome.error)

    def _settled(self, held: _Held, error: MeshError | None) -> None:
        held.done, held.error = True, error
        lane = held.lane
        if error is not None:
            lane.failing = True
        out = lane.out
        nc = self.runtime.nc
        while out and out[0].done:
            first = out[0]
            if first.error is None:
                out.pop(0)
                self._handed(-1)
                lane.part.held.pop(first.seq, None)
                if not settle(nc, first.msg, ACK):
                    self._work.spawn(settle_later(nc, first.msg, ACK))
                self.stats.delivered += 1
                continue
            if not all(h.done for h in out):
                return  # the later ones are being handed back (refused unrun): wait for them
            self._handed(-len(out))
            for h in reversed(out):  # back to the head of the lane, in order
                h.done, h.reply = False, ""
                lane.waiting.appendleft(h)
            lane.out = []
            lane.busy, lane.failing = True, False
            self._work.spawn(self._recover(first, first.error))
            return
        if not out:
            self._drop_if_empty(lane)
        self._pump(lane)

    def _handed(self, n: int) -> None:
        self._out += n
        if self._out:
            self._idle.clear()
        else:
            self._idle.set()

    def _drop_if_empty(self, lane: _Lane) -> None:
        if not lane.waiting and not lane.out and not lane.busy and lane.part.lanes.get(lane.token) is lane:
            del lane.part.lanes[lane.token]

    # -- failures ------------------------------------------------------------------------------

    async def _recover(self, held: _Held, error: MeshError) -> None:
        """The lane's first message failed: retry it (after its backoff), or bury it; then go on."""
        lane = held.lane
        part = lane.part
        log = self.log.bind(
            agent_type=part.agent_type, token=lane.token, msg_id=held.msg_id, attempts=held.attempts, code=error.code
        )
        try:
            turn_failed = isinstance(error, (AgentError, StateError, MeshTimeout)) or type(error) is MeshError
            if isinstance(error, RequestError) or (turn_failed and held.attempts >= self.options.max_attempts):
                await self._bury(held, error, log)
            elif turn_failed:
                delay = self.options.delay(held.attempts)
                held.attempts += 1
                self.stats.retried += 1
                log.info("durable.retrying", error=error.message, delay=delay)
                await asyncio.sleep(delay)
            elif error.message not in (NOT_RUN, MOVED_HERE):  # unavailable: not run, retried without limit
                held.refusals += 1
                delay = self.options.delay(held.refusals)
                log.info("durable.retrying", error=error.message, delay=delay)
                await asyncio.sleep(delay)
        finally:
            lane.busy = False
        self._pump(lane)

    async def _bury(self, held: _Held, error: MeshError, log: Any) -> None:
        lane = held.lane
        part = lane.part
        try:
            await deadletters.bury(
                self._js, held.msg, part.agent_type, lane.token, held.msg_id, error, held.attempts, replicas=self.options.replicas
            )
        except MeshError as exc:
            log.warning("durable.bury_failed", error=exc.message)
            await asyncio.sleep(self.options.delay(held.attempts))
            return  # still first in its lane: tried again
        lane.waiting.remove(held)
        part.held.pop(held.seq, None)
        await settle_later(self.runtime.nc, held.msg, ACK)
        self.stats.dead += 1
        DEAD_LETTERS.labels(part.agent_type).inc()
        self._record(
            part.agent_type,
            lane.token,
            "dead_letter",
            {"msg_id": held.msg_id, "error_code": error.code, "error": error.message, "attempts": held.attempts},
            (held.msg.headers or {}).get(subjects.HEADER_TRACEPARENT),
        )
        log.warning("durable.dead_lettered", error=error.message)

    # -- upkeep and observation ----------------------------------------------------------------

    async def _keep_alive(self) -> None:
        """Tell JetStream that every message held here for a while is being worked on, so none is
        redelivered while this worker holds it (waiting in its lane, retried, or in a long turn);
        most are acked long before they need it."""
        period = max(0.2, self.options.ack_wait / 3)
        nc = self.runtime.nc
        while True:
            await asyncio.sleep(period)
            self._now = now = time.monotonic()
            for part in self._parts:
                for held in list(part.held.values()):
                    if now - held.since < period:
                        continue
                    held.since = now
                    if not settle(nc, held.msg, PROGRESS):
                        await settle_later(nc, held.msg, PROGRESS)

    def _observe_backlog(self, part: _Partition) -> None:
        """Backlog gauge: the messages this worker last saw waiting in the stream, per type."""
        agent_type = part.agent_type
        total = sum(p.pending for p in self._parts if p.agent_type == agent_type)
        DURABLE_BACKLOG.labels(agent_type).set(total)

    def _observe_schedule(self, agent_type: str, token: str, scheduler: str, msg_id: str, traceparent: str) -> None:
        try:
            self._record(
                agent_type,
                token,
                "schedule",
                {"schedule": scheduler, "msg_id": msg_id, "trace_id": trace_id(traceparent)},
                traceparent,
            )
        except Exception as exc:  # observing must never stop a delivery
            self.log.warning("durable.observe_failed", error=repr(exc))

    def _record(self, agent_type: str, token: str, kind: str, data: dict[str, Any], traceparent: str | None) -> None:
        if not self._recorders:
            return
        try:
            name = subjects.decode_name(token)
        except MeshError:
            return
        body = {"kind": kind, "type": agent_type, "name": name, "at": time.time(), **data}
        for recorder in self._recorders:
            recorder.record(agent_type, name, kind, body, traceparent)
