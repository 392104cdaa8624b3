"""Calling agents from anywhere: scripts, tests, services, and other agents' turns.

Every call has a request id (`Mesh-Request-Id`: the caller's, or a random one), and the client
retries it with the same id until its deadline: when no reply came within an attempt time (0.25 s,
doubling up to 2 s; the earlier attempts still count, the first reply wins), and when a reply says
the request did not run (`unavailable`; `no_responders` for up to a second, as while a worker
restarts) or that its outcome is unknown (`outcome_unknown`). The owner of an instance runs a
request id at most once, so these retries are safe, and hedging around a worker that hangs is
what lets a call through it succeed elsewhere. Such hedged resends are budgeted (`HEDGE_SHARE` of
the calls in flight, at least `HEDGE_MIN`): when the mesh is merely slow, every call is late and
resending them all would only multiply the load. A stateless agent keeps no request ids (only a
repeat reaching the worker where the same id still runs is attached to it): its turns may run
more than once when the caller retries (keep them idempotent).

One hop to the owner: the owner of a stateful instance names itself in a reply (`Mesh-Owner`)
when the request did not come straight to it, and the client remembers it per instance (at most
`OWNER_CACHE` of them, the oldest forgotten first: a client cycling through more instances than
that should pass a larger `owner_cache`) and sends the next call's first attempt to the
owner's worker subject, saving the queue group's worker a forward and a relay. When that attempt
finds nobody there (`no_responders`: the owner is gone) or is refused (`unavailable`: the instance
moved, or the worker is stopping; it did not run), the client forgets the owner and sends the
request again at once to the type subject; every later attempt goes there too, so a hung owner is
routed around like before (the worker that forwards to it checks its lease). A connection whose
user may not publish to worker subjects (the server refused one) stops addressing owners.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mesh import subjects, wire
from mesh._nats import (
    Connection,
    Message,
    NatsOptions,
    bind_bucket,
    connect,
    next_message,
    publish,
    subscribe,
    unsubscribe,
    worker_subjects_denied,
)
from mesh._nats.inbox import Exchanged, inbox_of, no_responders
from mesh.context import current_turn
from mesh.errors import MeshError, MeshTimeout, NoResponders, OutcomeUnknown, Unavailable
from mesh.methods import check_method
from mesh.request_ids import check_request_id, new_request_id
from mesh.tracing import child_traceparent

OWNER_CACHE = 16_384  # instances whose owner a client remembers
_WORKER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

if TYPE_CHECKING:
    from mesh.schedules import ScheduleInfo

DEFAULT_TIMEOUT = subjects.DEFAULT_TIMEOUT_MS / 1000
RESEND = (0.25, 2.0)  # seconds without a reply before the first resend, and the cap as it doubles
# (short, since a call in flight to a worker that died is only resent then: most of a failover's time)
NO_RESPONDERS_FOR = 1.0  # seconds "nobody serves this type" is retried before it is the answer
_BACKOFF = (0.05, 1.0)  # seconds before a resend after a retryable error, doubling, and its cap
HEDGE_SHARE = 0.1  # at most this share of a client's calls in flight resend while unanswered...
HEDGE_MIN = 8  # ...or this many, whichever is more
_NOT_RUN = (Unavailable.code, MeshTimeout.code)  # what a worker answers for an attempt it did not run
_WAIT = float("inf")  # not final, and no reason to resend sooner than planned


class MeshClient:
    """Request/reply, fire-and-forget and events on agent subjects.

    Inside a turn, calls inherit the turn's trace id, deadline and call chain, so a cycle
    (A calls B calls A) fails fast instead of waiting for the deadline.
    """

    def __init__(self, nc: Connection, *, default_timeout: float = DEFAULT_TIMEOUT, owner_cache: int = OWNER_CACHE) -> None:
        self.nc = nc
        self.default_timeout = default_timeout
        self.owner_cache = owner_cache
        self._owners: dict[str, str] = {}  # agent subject -> its owner's worker subject (insertion order: oldest first)
        self._in_flight = 0  # calls waiting for their reply
        self._hedging = 0  # of which resend while an attempt is unanswered (see HEDGE_SHARE)

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
        request_id: str | None = None,
    ) -> Any:
        """Send a request to `(agent_type, name)` and return its decoded JSON reply.

        `method` runs that `@mesh.method` of the instance instead of `on_request` (`Mesh-Method`).
        `request_id` (1 to 128 printable characters; default: a fresh random one) makes the call
        take effect at most once, however often it is sent: a call repeated with the same id within
        two minutes gets the first one's reply. Raises the callee's error as its typed `MeshError`
        subclass; `OutcomeUnknown` or `MeshTimeout` when it may have run (call again with the same
        id to find out).
        """
        data = payload if isinstance(payload, bytes) else wire.dumps(payload)
        headers = None if method is None else {subjects.HEADER_METHOD: check_method(method)}
        subject = subjects.agent_subject(agent_type, name)
        return wire.loads(await self.call_raw(subject, data, timeout=timeout, headers=headers, request_id=request_id))

    async def call_raw(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the deadline travels with the request
        headers: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> bytes:
        """Request/reply with raw bytes, retried as the module doc says; `headers` are sent along
        with the call's context headers and its request id (`request_id`, else a fresh one)."""
        timeout, context = self._outgoing(timeout)
        headers = {**(headers or {}), **context}
        headers[subjects.HEADER_REQUEST_ID] = new_request_id() if request_id is None else check_request_id(request_id)
        direct = self._owners.get(subject)
        if direct is not None and worker_subjects_denied(self.nc):  # this user may not address workers
            self._owners.clear()
            self.owner_cache, direct = 0, None
        attempts = _Attempts(self, subject, direct)
        self._in_flight += 1
        try:
            result = await inbox_of(self.nc).exchange(
                subject,
                data,
                timeout=timeout,
                headers=headers,
                judge=attempts,
                resend=RESEND,
                may_hedge=attempts.hedge,
                first=direct,
            )
        finally:
            self._in_flight -= 1
            if attempts.hedging:
                self._hedging -= 1
        if attempts.owner is not None:
            self._learn_owner(subject, attempts.owner)
        return _answer(subject, timeout, result, attempts)

    def owner_of(self, agent_type: str, name: str) -> str | None:
        """The worker subject this client sends the instance's calls to first, if it knows the owner."""
        return self._owners.get(subjects.agent_subject(agent_type, name))

    def _learn_owner(self, subject: str, owner: str) -> None:
        if not subject.startswith("agents.") or not _WORKER_ID.match(owner) or self.owner_cache <= 0:
            return
        direct = f"_mesh.w.{owner}.{subject[7:]}"
        owners = self._owners
        if owners.get(subject) == direct:
            return
        if len(owners) >= self.owner_cache and subject not in owners:
            del owners[next(iter(owners))]
        owners[subject] = direct

    def _forget_owner(self, subject: str) -> None:
        self._owners.pop(subject, None)

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
                if msg is None or not msg.data:  # no data: the server's no-responders status (no worker at all)
                    break
                info = wire.loads(msg.data)
                if (info.get("metadata") or {}).get("mesh.kind") == "agent":
                    replies.append(info)
        finally:
            await unsubscribe(sub)
        return replies

    def _outgoing(self, timeout: float | None) -> tuple[float, dict[str, str]]:
        """The call's wait and its context headers: trace, call chain, and its deadline both as
        `Mesh-Timeout-Ms` and as `Mesh-Deadline` (absolute; a call inside a turn that has less time
        left than asked passes the turn's caller's own deadline on unchanged)."""
        turn = current_turn.get()
        timeout = self.default_timeout if timeout is None else timeout
        headers: dict[str, str] = {}
        inherited: str | None = None
        if turn is not None:  # outside a turn there is no trace to continue: the callee starts one
            headers[subjects.HEADER_TRACEPARENT] = child_traceparent(turn.traceparent)
            headers[subjects.HEADER_CHAIN] = ",".join(turn.chain)
            left = turn.remaining()
            if left is not None:
                if left <= 0:
                    raise MeshTimeout("the current turn's deadline has already passed")
                if left < timeout:
                    timeout, inherited = left, turn.deadline_ms
        millis = max(1, int(timeout * 1000))
        if turn is not None or millis != subjects.DEFAULT_TIMEOUT_MS:  # the default goes without saying
            headers[subjects.HEADER_TIMEOUT] = str(millis)
        headers[subjects.HEADER_DEADLINE] = inherited or str(int(time.time() * 1000) + millis)
        return timeout, headers


class _Attempts:
    """Judges each reply to a call's attempts (`ReplyInbox.exchange`): final, or worth another
    attempt after a pause; remembers whether any attempt's outcome was reported unknown."""

    __slots__ = ("client", "subject", "direct", "owner", "unknown", "hedging", "_pause", "_no_responders_until")

    def __init__(self, client: MeshClient, subject: str, direct: str | None) -> None:
        self.client = client
        self.subject = subject
        self.direct = direct is not None  # the first attempt went to the owner's worker subject
        self.owner: str | None = None  # the owner a reply named (`Mesh-Owner`)
        self.unknown = False
        self.hedging = False  # counted in the client's hedging budget
        self._pause = _BACKOFF[0]
        self._no_responders_until = 0.0

    def hedge(self) -> bool:
        """May this call resend while an attempt is unanswered? Once allowed, it keeps its place."""
        if not self.hedging:
            client = self.client
            if client._hedging >= max(HEDGE_MIN, client._in_flight * HEDGE_SHARE):
                return False
            client._hedging += 1
            self.hedging = True
        return True

    def __call__(self, msg: Message, pending: bool) -> float | None:
        headers = msg.headers
        if not headers:
            return None  # the fast path: a reply without headers is a success
        code = headers.get(subjects.HEADER_MESH_ERROR)
        if code is None:
            if not no_responders(msg):
                self.owner = headers.get(subjects.HEADER_OWNER)
                return None
            if self.direct:  # the owner we knew is gone: ask the type subject at once
                return self._reroute(pending)
            if pending:
                return _WAIT  # this attempt found nobody; an earlier one is still out
            now = time.monotonic()
            if not self._no_responders_until:
                self._no_responders_until = now + NO_RESPONDERS_FOR
            return self._next_pause() if now < self._no_responders_until else None
        if code == OutcomeUnknown.code:
            self.unknown = True
            return self._next_pause()
        if self.direct and code == Unavailable.code:  # not the owner (any more), or stopping: it did not run
            return self._reroute(pending)
        if code in _NOT_RUN:  # this attempt did not run: an earlier one still out may yet answer
            return _WAIT if pending else self._next_pause() if code == Unavailable.code else None
        return None

    def _reroute(self, pending: bool) -> float:
        """The attempt sent to the owner's worker subject found nobody or was refused unrun: forget
        that owner, and send again now, to the type subject (an attempt still out may yet answer)."""
        self.direct = False
        self.client._forget_owner(self.subject)
        return _WAIT if pending else 0.0

    def _next_pause(self) -> float:
        pause = self._pause
        self._pause = min(pause * 2, _BACKOFF[1])
        return pause


def _answer(subject: str, timeout: float, result: Exchanged, attempts: _Attempts) -> bytes:
    """The reply's body, or the error that tells the truth about the call as a whole."""
    msg = result.reply
    err: MeshError | None = None
    if msg is not None:
        err = NoResponders(f"no worker serves {subject}") if no_responders(msg) else wire.error_of(msg.headers, msg.data)
    if result.final and err is None:
        assert msg is not None
        return msg.data
    if attempts.unknown:  # an attempt may have taken effect: no later failure can say it did not
        detail = f"; the last attempt: {err.message}" if err is not None else ""
        raise OutcomeUnknown(f"the outcome of the request on {subject} is unknown; retry it with the same request id{detail}")
    if err is None or (result.unanswered and (not result.final or isinstance(err, NoResponders))):
        raise MeshTimeout(f"no reply on {subject} within {timeout:.3g}s")
    raise err
