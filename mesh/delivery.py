"""Delivering durable messages: pull them from MESH_DURABLE and run each as a turn of its instance.

Each worker pulls every partition of every agent type it hosts. A partition is one durable pull
consumer `mesh_<type>_<p>` with `max_ack_pending=1`: JetStream hands out the partition's next
message only after the previous one was acknowledged (or given up on), whichever worker pulls.
So messages to one instance run in stored order, also across redeliveries and failovers: a message
waiting for its retry holds back the ones behind it (head-of-line blocking is the price of order).

A delivered message becomes an ordinary request to `agents.<type>.<token>` carrying
`Mesh-Msg-Id`; it reaches the instance's owner like any request (forwarded if needed), and its
reply comes only after the turn's state was saved. Then the message is acked. A redelivery after
a crash between save and ack is answered from the instance's processed-ids record (`mesh.dedupe`).

Failures: a request error (bad JSON, schema) cannot succeed on retry and goes to the dead letters
at once; a failed turn (handler error, invalid state, timeout) is retried with backoff and goes to
the dead letters after `max_attempts` deliveries; an unavailable mesh (failover, shutdown,
conflict) is retried with backoff without limit, since the turn did not take effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from mesh import deadletters, subjects, wire
from mesh._nats import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    JetStream,
    Message,
    PullConsumer,
    add_pull_consumer,
    map_errors,
    request,
)
from mesh.durable import DurableOptions, ensure_streams
from mesh.errors import AgentError, ConnectionFailed, MeshError, MeshTimeout, RequestError, StateError, Unavailable
from mesh.metrics import DEAD_LETTERS, DURABLE_BACKLOG
from mesh.recorder import FlightRecorder
from mesh.tasks import TaskSet
from mesh.tracing import child_traceparent, trace_id

if TYPE_CHECKING:
    from mesh.runtime import Runtime


_T = TypeVar("_T")


@dataclass
class DeliveryStats:
    delivered: int = 0
    retried: int = 0
    dead: int = 0


def consumer_name(agent_type: str, partition: int) -> str:
    return f"mesh_{agent_type}_{partition}"


class DurableDelivery:
    """Runs the pull loops of one worker. `start()` after the runtime started, `stop()` before it stops."""

    def __init__(self, runtime: Runtime, options: DurableOptions | None = None) -> None:
        self.runtime = runtime
        self.options = options or DurableOptions()
        self.stats = DeliveryStats()
        self.log = runtime.log.bind(component="durable")
        self._js: JetStream = runtime.nc.jetstream(timeout=5.0)
        self._tasks = TaskSet(self.log, "durable.loop_failed")
        self._subs: list[PullConsumer] = []
        self._stopping = False
        self._idle: set[asyncio.Task[Any]] = set()  # loops waiting in a pull, holding no message
        self._recorders = [o for o in runtime.observers if isinstance(o, FlightRecorder)]
        self._pending: dict[tuple[str, str], int] = {}  # (type, consumer) -> messages waiting

    async def start(self) -> None:
        await ensure_streams(self._js, self.options.replicas)
        for agent_type in self.runtime.agents:
            for partition in self.options.partitions:
                name = consumer_name(agent_type, partition)
                config = ConsumerConfig(
                    durable_name=name,
                    filter_subject=subjects.durable_partition_filter(agent_type, partition),
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    max_ack_pending=1,
                    ack_wait=self.options.ack_wait,
                    max_deliver=-1,
                    description=f"agent-mesh durable delivery to {agent_type}, partition {partition}",
                )
                create = functools.partial(add_pull_consumer, self._js, subjects.DURABLE_STREAM, config)
                sub = await self._until_answered(name, create)
                self._subs.append(sub)
                self._tasks.spawn(self._serve(sub, agent_type))
        self.log.info("durable.started", consumers=len(self._subs))

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
        """Stop pulling; let the messages being delivered finish within `grace`; unacked ones return.

        Loops waiting in a pull are cancelled at once rather than waited out (up to `fetch_wait`): a
        message answering a pull at that very moment stays unacked, and JetStream redelivers it
        after `ack_wait`, as after a crash.
        """
        if self._stopping:
            return
        self._stopping = True
        for task in self._idle:  # nothing to finish there: a stopping worker does not wait out a pull
            task.cancel()
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(grace, self.options.fetch_wait + 0.5))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.close()
        self.log.info("durable.stopped", delivered=self.stats.delivered, dead=self.stats.dead)

    def statistics(self) -> dict[str, int]:
        return {"delivered": self.stats.delivered, "retried": self.stats.retried, "dead": self.stats.dead}

    async def _serve(self, sub: PullConsumer, agent_type: str) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self._stopping:
            self._idle.add(me)
            try:
                msgs = await sub.fetch(1, timeout=self.options.fetch_wait)
            except ConnectionFailed:
                return
            except Exception as exc:  # leader election, reconnect: wait and pull again
                self.log.debug("durable.fetch_failed", agent_type=agent_type, error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            finally:
                self._idle.discard(me)
            for msg in msgs:
                try:
                    await self._deliver(msg, agent_type)
                except Exception as exc:  # e.g. the connection dropped: unacked, so it comes back
                    self.log.warning("durable.delivery_failed", agent_type=agent_type, error=repr(exc))
                    await asyncio.sleep(0.5)

    async def _deliver(self, msg: Message, agent_type: str) -> None:
        meta = msg.metadata
        attempts = meta.num_delivered or 1
        token = msg.subject.split(".", 3)[3]
        headers = msg.headers or {}
        msg_id = headers.get(subjects.HEADER_NATS_MSG_ID) or f"seq:{meta.sequence.stream}"
        out = {
            subjects.HEADER_MSG_ID: msg_id,
            subjects.HEADER_TRACEPARENT: child_traceparent(headers.get(subjects.HEADER_TRACEPARENT)),
            subjects.HEADER_TIMEOUT: str(int(self.options.turn_timeout * 1000)),
        }
        if method := headers.get(subjects.HEADER_METHOD):
            out[subjects.HEADER_METHOD] = method
        try:
            self._observe_delivery(agent_type, token, meta, headers, out)
        except Exception as exc:  # observing must never stop a delivery
            self.log.warning("durable.observe_failed", error=repr(exc))
        keepalive = self._tasks.spawn(self._keep_alive(msg))
        try:
            reply = await request(
                self.runtime.nc,
                f"agents.{agent_type}.{token}",
                msg.data,
                timeout=self.options.turn_timeout,
                headers=out,
            )
            error = wire.error_of(reply.headers, reply.data)
        except MeshError as exc:
            error = exc
        finally:
            keepalive.cancel()
        try:
            with map_errors(f"settle a delivery to {agent_type}"):
                if error is None:
                    await msg.ack()
                    self.stats.delivered += 1
                else:
                    await self._failed(msg, agent_type, token, msg_id, error, attempts)
        except ConnectionFailed:
            pass  # not acked: JetStream redelivers it after ack_wait

    async def _failed(self, msg: Message, agent_type: str, token: str, msg_id: str, error: MeshError, attempts: int) -> None:
        log = self.log.bind(agent_type=agent_type, token=token, msg_id=msg_id, attempts=attempts, code=error.code)
        turn_failed = isinstance(error, (AgentError, StateError, MeshTimeout)) or type(error) is MeshError
        if isinstance(error, RequestError) or (turn_failed and attempts >= self.options.max_attempts):
            try:
                await deadletters.bury(self._js, msg, agent_type, token, msg_id, error, attempts, replicas=self.options.replicas)
            except MeshError as exc:
                log.warning("durable.bury_failed", error=exc.message)
                await msg.nak(delay=self.options.delay(attempts))
                return
            await msg.ack()
            self.stats.dead += 1
            DEAD_LETTERS.labels(agent_type).inc()
            self._record(
                agent_type,
                token,
                "dead_letter",
                {
                    "msg_id": msg_id,
                    "error_code": error.code,
                    "error": error.message,
                    "attempts": attempts,
                },
                (msg.headers or {}).get(subjects.HEADER_TRACEPARENT),
            )
            log.warning("durable.dead_lettered", error=error.message)
            return
        delay = self.options.delay(attempts)
        await msg.nak(delay=delay)
        self.stats.retried += 1
        log.info("durable.retrying", error=error.message, delay=delay)

    def _observe_delivery(self, agent_type: str, token: str, meta: Any, headers: dict[str, str], out: dict[str, str]) -> None:
        """Backlog gauge (what this worker last saw pending per consumer) and `schedule` events."""
        self._pending[(agent_type, meta.consumer)] = meta.num_pending or 0
        DURABLE_BACKLOG.labels(agent_type).set(sum(n for (t, _), n in self._pending.items() if t == agent_type))
        scheduler = headers.get(subjects.HEADER_NATS_SCHEDULER)
        if scheduler:
            traceparent = out[subjects.HEADER_TRACEPARENT]
            self._record(
                agent_type,
                token,
                "schedule",
                {
                    "schedule": scheduler,
                    "msg_id": out[subjects.HEADER_MSG_ID],
                    "trace_id": trace_id(traceparent),
                },
                traceparent,
            )

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

    async def _keep_alive(self, msg: Message) -> None:
        """Tell JetStream the message is being worked on, so a long turn is not redelivered meanwhile."""
        period = max(0.2, self.options.ack_wait / 3)
        started = time.monotonic()
        while True:
            await asyncio.sleep(period)
            with contextlib.suppress(Exception):
                await msg.in_progress()
            if time.monotonic() - started > self.options.turn_timeout + self.options.ack_wait:
                return
