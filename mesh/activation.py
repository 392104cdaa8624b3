"""One instance owned by this worker: its mailbox, its in-memory state, and the order of its turns.

Turns run strictly one after another from the mailbox, each through `mesh.turns.run_turn`. State is
kept in memory between turns; after each batch of turns taken from the mailbox it is written once
with compare-and-set on the revision this activation last wrote (group commit), and only then are
the batch's replies sent. So an acknowledged reply always describes saved state, and a worker that
lost ownership can never overwrite newer state: its write fails with a conflict and its callers get
an error. A write whose outcome cannot be found out (`Bucket.save`) answers the batch
`outcome_unknown` and the instance reloads before its next turn. Durable messages already in the
saved state are answered without a turn (`AppliedIds`).

Requests with a `Mesh-Request-Id` (`mesh.request_ids`): one whose id took effect within the window
gets its original reply without a turn; one whose id is queued or running here is attached to that
request and gets its outcome; the ids and replies of a batch are saved in the same atomic write as
its state.

An activation talks to the worker hosting it only through `Host`, the few things it needs (the
runtime implements it); it never imports `mesh.runtime`.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

import pydantic
import structlog

from mesh import subjects
from mesh._nats.kv import write_id
from mesh.agent import Agent
from mesh.bus import Bucket
from mesh.client import MeshClient
from mesh.dedupe import AppliedIds
from mesh.directory import Directory
from mesh.errors import MeshError, MeshTimeout, OutcomeUnknown, PayloadTooLarge, RequestError, StateInvalid, Unavailable
from mesh.handoff import MOVED_HERE, NOT_RUN, answer, is_local
from mesh.observe import StateRecord
from mesh.request_ids import RECORD_TTL, SKEW_MS, RequestIndex, Spill, check_request_id, records_prefix
from mesh.tasks import TaskSet
from mesh.turns import Envelope, Outcome, Turns, dump_state, run_turn


class Host(Protocol):
    """What an activation needs from the worker that hosts it (`mesh.runtime.Runtime`)."""

    @property
    def directory(self) -> Directory:
        """Ownership: who owns an instance, and whether this worker's lease still holds."""

    @property
    def state(self) -> Bucket:
        """The state bucket (`mesh_state`)."""

    @property
    def client(self) -> MeshClient:
        """The client agents call other agents with."""

    @property
    def turns(self) -> Turns:
        """Limits, counters and reporting shared by every turn of the worker."""

    @property
    def background(self) -> TaskSet:
        """Work that lasts until the worker stops (an agent's timers); cancelled, not awaited, on stop."""

    async def reply(self, outcome: Outcome) -> None:
        """Send a turn's reply or error to its caller (nothing if nobody waits)."""

    def start_now(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        """Run `coro` at once up to its first wait, then as a task the worker waits for on stop."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as a task the worker waits for on stop."""

    def forward(self, activation: Activation, envelope: Envelope) -> None:
        """Send a request to the worker that owns the instance (`activation.owner`), relaying its reply."""

    def forget(self, activation: Activation) -> None:
        """Drop the activation from the worker's table (if it is still the one there)."""


class Status(enum.Enum):
    PENDING = "pending"  # nobody here knows the owner yet
    OWNED = "owned"  # this worker owns the instance; turns run here
    REMOTE = "remote"  # another worker owns it; requests are forwarded there
    RELEASING = "releasing"  # being let go after idling; new requests wait for it


class Activation:
    __slots__ = (
        "host",
        "agent_cls",
        "name",
        "key",
        "status",
        "owner",
        "dir_revision",
        "state_revision",
        "agent",
        "saved",
        "current",
        "queue",
        "running",
        "last_used",
        "epoch",
        "applied",
        "applied_saved",
        "inflight",
        "requests",
    )

    def __init__(self, host: Host, agent_cls: type[Agent[Any]], name: str, key: str) -> None:
        self.host = host
        self.agent_cls = agent_cls
        self.name = name
        self.key = key
        self.status = Status.PENDING
        self.owner: str | None = None
        self.dir_revision = 0
        self.state_revision = 0
        self.agent: Agent[Any] | None = None
        self.saved = b""  # state bytes as last written (or loaded)
        self.current = b""  # state bytes after the last successful turn
        self.applied: AppliedIds | None = None  # durable message ids the state includes (mesh.dedupe)
        self.applied_saved = ""  # the record as last written (or loaded), for rollback
        self.queue: deque[Envelope] | None = None  # created on demand: most instances idle
        self.inflight: dict[str, Envelope] | None = None  # request id -> the queued or running request
        self.requests: RequestIndex | None = None  # request ids that took effect, with their replies
        self.running = False
        self.last_used = time.monotonic()
        self.epoch = 0

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        log: structlog.typing.FilteringBoundLogger = self.host.turns.log.bind(
            agent_type=self.agent_cls.type, agent_name=self.name
        )
        return log

    def deliver(self, envelope: Envelope) -> None:
        self.last_used = time.monotonic()
        if subjects.HEADER_REQUEST_ID in envelope.headers and not self._track(envelope):
            return
        if self.status is Status.REMOTE:
            self.host.forward(self, envelope)
            return
        if self.queue is None:
            self.queue = deque()
        self.queue.append(envelope)
        if not self.running:
            self.running = True
            self.host.start_now(self._drain())

    def _track(self, envelope: Envelope) -> bool:
        """Note a request's id; False when it needs no place in the mailbox (attached to the same
        request already here, or refused for a malformed id)."""
        try:
            request_id = check_request_id(envelope.headers[subjects.HEADER_REQUEST_ID])
        except RequestError as err:
            self.host.spawn(self.host.reply(Outcome(envelope, None, err)))
            return False
        if self.status is Status.REMOTE:
            return True  # the owner attaches it
        if self.inflight is None:
            self.inflight = {}
        first = self.inflight.get(request_id)
        if first is not None:
            if first.attached is None:
                first.attached = []
            first.attached.append(envelope)
            return False
        envelope.request_id = request_id
        self.inflight[request_id] = envelope
        return True

    async def _answer(self, outcome: Outcome) -> None:
        """Reply to a request and to the retries attached to it."""
        envelope = outcome.envelope
        if is_local(envelope.reply):
            answer(outcome)
            return
        if envelope.request_id is not None:
            self._untrack(envelope)
        await self.host.reply(outcome)
        for other in envelope.attached or ():
            await self.host.reply(Outcome(other, outcome.body, outcome.error))
        envelope.attached = None

    def _untrack(self, envelope: Envelope) -> None:
        inflight = self.inflight
        if inflight is not None and inflight.get(envelope.request_id or "") is envelope:
            del inflight[envelope.request_id or ""]
            if not inflight:
                self.inflight = None  # an emptied dict keeps its table: most instances sit idle

    def _send_away(self, envelope: Envelope) -> None:
        """Forward a queued request (and the retries attached to it) to the owner, which tracks them;
        a durable message handed over in process goes back to delivery, which sends it in order."""
        if is_local(envelope.reply):
            answer(Outcome(envelope, None, Unavailable(MOVED_HERE)))
            return
        if envelope.request_id is not None:
            self._untrack(envelope)
            envelope.request_id = None
        attached, envelope.attached = envelope.attached, None
        self.host.forward(self, envelope)
        for other in attached or ():
            self.host.forward(self, other)

    def idle_since(self, now: float) -> float:
        return 0.0 if self.running or self.queue else now - self.last_used

    async def release(self) -> None:
        """Let the instance go (called by the runtime when it has idled long enough)."""
        if self.running or self.queue:
            return  # a request arrived since the idle sweep looked
        if self.status is Status.OWNED:
            self.status = Status.RELEASING
            self.running = True
            await self._release()
        else:
            self.host.forget(self)

    async def _release(self) -> None:
        try:
            if self.agent is not None:
                try:
                    await self.agent.on_deactivate()
                except Exception:
                    self.log.exception("agent.deactivate_failed")
            await self.host.directory.release(self.key, self.dir_revision)
            if self.host.turns.log_turns:
                self.log.debug("instance.released")
        finally:
            self.status = Status.PENDING
            self.agent = None
            if self.queue:  # requests arrived while releasing: activate again, off the eviction sweep
                self.running = True
                self.host.spawn(self._drain())
            else:
                self.running = False
                self.host.forget(self)

    async def _drain(self) -> None:
        try:
            limit = self.host.turns.max_batch
            while self.queue:
                if self.status is not Status.REMOTE and self.host.directory.fenced():
                    # Lease lapsed (a pause) or connection lost: park the mailbox until the lease is
                    # renewed (asked for now), then re-check ownership below, instead of refusing.
                    await self.host.directory.regain(self.host.directory.lease_ttl)
                if self.status is Status.OWNED and self.epoch != self.host.directory.epoch:
                    self.status = Status.PENDING
                if self.status is Status.PENDING:
                    await self._activate()
                if self.status is Status.REMOTE:
                    while self.queue:
                        self._send_away(self.queue.popleft())
                    return
                batch = [self.queue.popleft() for _ in range(min(limit, len(self.queue)))]
                await self._run_batch(batch)
        except Exception as exc:
            err = exc if isinstance(exc, MeshError) else Unavailable(f"instance could not be activated: {exc}")
            if not isinstance(exc, MeshError):
                self.log.exception("instance.failed")
            else:
                self.log.warning("instance.activation_failed", error=err.message, code=err.code)
            while self.queue:
                await self._answer(Outcome(self.queue.popleft(), None, err))
            for envelope in list((self.inflight or {}).values()):  # in the batch that failed: it may have been saved
                await self._answer(Outcome(envelope, None, OutcomeUnknown("the instance failed during this request's turn")))
            self.host.forget(self)
        finally:
            self.running = False
            self.queue = None

    async def _activate(self) -> None:
        host = self.host
        directory = host.directory
        claim = await directory.resolve(self.key)
        if claim.owner != directory.worker_id:
            self.status, self.owner = Status.REMOTE, claim.owner
            self.dir_revision = claim.revision  # the entry naming the owner, should it have to be taken over
            return
        self.dir_revision = claim.revision
        self.epoch = directory.epoch
        model = self.agent_cls.state_model
        assert model is not None
        # A fresh claim proves the instance was never activated: skip the read (one KV round trip of
        # three on a first touch). Should state exist anyway, the first save fails with a conflict.
        found = None if claim.fresh else await host.state.get_with_headers(self.key)
        self.applied_saved = "" if found is None else found[2].get(subjects.HEADER_APPLIED, "")
        self.applied = AppliedIds.from_header(self.applied_saved) if self.applied_saved else None
        if found is not None and (subjects.HEADER_REQUESTS in found[2] or subjects.HEADER_REQUESTS_UNTIL in found[2]):
            await self._load_requests(found[2])
        if found is None:
            state = self.agent_cls.initial_state(self.name)
            self.state_revision = 0
            self.saved = self.current = dump_state(state)
        else:
            try:
                state = model.model_validate_json(found[0])
            except pydantic.ValidationError as exc:
                raise StateInvalid(f"stored state of {self.key} does not match {model.__name__}: {exc}") from exc
            self.saved = self.current = found[0]
            self.state_revision = found[1]
        self.agent = agent = self.agent_cls(self.name, state, host.client)
        agent._background = host.background
        self.status = Status.OWNED
        self.owner = directory.worker_id
        if type(agent).on_activate is not Agent.on_activate:  # most agents have none: no coroutine, no second dump
            await agent.on_activate()
            self.current = dump_state(agent.state)  # what on_activate changed is saved with the next turn
        if host.turns.log_turns:
            self.log.debug("instance.activated", revision=self.state_revision)

    async def _load_requests(self, headers: dict[str, str]) -> None:
        """Take in the replies of requests with ids that the stored state says may still count:
        those in its `Mesh-Requests` header, and the spilled records if `Mesh-Requests-Until` has
        not passed (after idling out of the window, nothing is read)."""
        now_ms = int(time.time() * 1000)
        if self.requests is None:
            self.requests = RequestIndex()
        index = self.requests
        loaded = index.load_header(headers.get(subjects.HEADER_REQUESTS, "[]"), now_ms)
        try:
            until = int(headers.get(subjects.HEADER_REQUESTS_UNTIL, "0"))
        except ValueError:
            until = 0
        if until + SKEW_MS > now_ms:
            index.until = max(index.until, until)
            loaded += index.load_records(await self.host.state.values(records_prefix(self.key)), now_ms)
        if self.host.turns.log_turns:
            self.log.debug("requests.loaded", count=loaded)

    async def _run_batch(self, batch: list[Envelope]) -> None:
        host = self.host
        turns = host.turns
        agent = self.agent
        assert agent is not None
        outcomes: list[Outcome] = []
        with_ids: list[Outcome] | None = None  # turns of requests with an id that took effect
        hold = False  # a durable message handed over in process failed: its later ones must wait
        for envelope in batch:
            msg_id = envelope.headers.get(subjects.HEADER_MSG_ID)
            if hold and is_local(envelope.reply):
                outcomes.append(Outcome(envelope, None, Unavailable(NOT_RUN)))
                continue
            refused = self._refuse(envelope, msg_id)
            if refused is not None:
                outcomes.append(refused)
                hold = hold or (refused.error is not None and is_local(envelope.reply))
                continue
            before = self.current
            outcome = await run_turn(turns, agent, self.key, envelope, before)
            if outcome.error is None:
                self.current = outcome.state or before
                if msg_id is not None:
                    if self.applied is None:
                        self.applied = AppliedIds()
                    self.applied.add(msg_id)
                if envelope.request_id is not None:
                    if with_ids is None:
                        with_ids = []
                    with_ids.append(outcome)
            else:
                self._rollback(before)
                hold = hold or is_local(envelope.reply)
            outcomes.append(outcome)
        # Group commit: one compare-and-set write for the whole batch (inline: this is the hot path).
        saved: StateRecord | None = None
        if with_ids or self.current != self.saved or (self.applied is not None and self.applied.dirty):
            try:
                if host.directory.fenced():
                    raise Unavailable("worker lease lapsed before the state could be saved")
                headers: dict[str, str] = {}
                record = None
                if self.applied is not None and len(self.applied):
                    record = headers[subjects.HEADER_APPLIED] = self.applied.header()
                entries, now_ms = None, 0
                if with_ids is not None or self.requests is not None:  # requests with ids, now or lately
                    entries, now_ms = self._request_headers(headers, with_ids)
                write = write_id(turns.worker_id, self.state_revision)
                self.state_revision = await host.state.save(self.key, self.current, self.state_revision, headers, write=write)
                if entries and self.requests is not None:
                    self.requests.took_effect(entries, now_ms)
                if record is not None and self.applied is not None:
                    self.applied_saved, self.applied.dirty = record, False
                self.saved = self.current
                if turns.observers:
                    saved = StateRecord(
                        self.agent_cls.type, self.name, turns.worker_id, self.state_revision, len(self.saved), self.key
                    )
            except MeshError as err:  # the batch's turns fail with it; back to what was saved
                self.log.warning("state.save_failed", code=err.code, error=err.message)
                for outcome in outcomes:
                    if outcome.error is None:
                        outcome.body, outcome.error = None, err
                self._rollback(self.saved)
                self.applied = AppliedIds.from_header(self.applied_saved) if self.applied_saved else None
                self.status = Status.PENDING  # reload state and re-check ownership before the next turn
                hold = True
        if hold and self.queue:
            self._hold_back(outcomes)
        for outcome in outcomes:
            await self._answer(outcome)
        if self.requests is not None:
            self._spill()
        # Observers (metrics, the flight recorder) hear of the turns only now, so they never delay
        # a reply; a turn whose state could not be saved is reported with that error.
        if turns.log_turns or turns.observers:
            for outcome in outcomes:
                turns.finished(outcome)
        if saved is not None:
            for observer in turns.observers:
                observer.on_state_saved(saved)

    def _hold_back(self, outcomes: list[Outcome]) -> None:
        """Take the queued durable messages handed over in process out of the mailbox, unrun: one
        before them failed, and delivery retries it first (`mesh.handoff`)."""
        assert self.queue is not None
        kept: deque[Envelope] = deque()
        for envelope in self.queue:
            if is_local(envelope.reply):
                outcomes.append(Outcome(envelope, None, Unavailable(NOT_RUN)))
            else:
                kept.append(envelope)
        self.queue = kept

    def _request_headers(
        self, headers: dict[str, str], with_ids: list[Outcome] | None
    ) -> tuple[list[tuple[str, bytes | None, bytes]], int]:
        """Add what the next state write says about request ids: the carried replies plus this
        batch's (`Mesh-Requests`), and until when spilled records count (`Mesh-Requests-Until`).
        Returns the batch's entries and the time (unix ms) they are recorded at."""
        now_ms = int(time.time() * 1000)
        if self.requests is None:
            self.requests = RequestIndex()
        replies = [(o.envelope.request_id or "", o.body or b"null") for o in with_ids or ()]
        entries = RequestIndex.entries(replies, now_ms)
        carried = self.requests.header(now_ms, entries)
        if carried is not None:
            headers[subjects.HEADER_REQUESTS] = carried
        if self.requests.until > now_ms:
            headers[subjects.HEADER_REQUESTS_UNTIL] = str(self.requests.until)
        return entries, now_ms

    def _spill(self) -> None:
        """Copy the carried replies into records once they are many (off the reply path)."""
        index = self.requests
        if index is None or not index.spill_due():
            return
        index.spilling = True
        spill = index.spill(self.key, write_id(self.host.turns.worker_id, self.state_revision), self._record_limit())
        self.host.spawn(self._store_spill(index, spill))

    async def _store_spill(self, index: RequestIndex, spill: Spill) -> None:
        try:
            for key, value in spill.records:
                await self.host.state.put_with_ttl(key, value, RECORD_TTL)
        except MeshError as err:  # they stay in the header and are spilled again later
            self.log.warning("requests.spill_failed", code=err.code, error=err.message)
        else:
            index.spilled(spill)
        finally:
            index.spilling = False

    def _record_limit(self) -> int:
        return max(4096, self.host.client.nc.max_payload - 4096)

    def _refuse(self, envelope: Envelope, msg_id: str | None) -> Outcome | None:
        """The outcome of a request that gets no turn: too late, already taken effect, fenced, or
        already applied."""
        if envelope.deadline is not None and time.monotonic() > envelope.deadline:
            return Outcome(envelope, None, MeshTimeout("the caller's deadline passed before the turn started"))
        if envelope.request_id is not None and self.requests is not None:
            known, reply = self.requests.get(envelope.request_id, int(time.time() * 1000))
            if known:
                self.log.info("turn.deduplicated", request_id=envelope.request_id)
                if reply is None:
                    return Outcome(envelope, None, PayloadTooLarge("the request took effect; its reply was too large to keep"))
                return Outcome(envelope, reply, None)
        if self.host.directory.fenced():
            return Outcome(envelope, None, Unavailable("worker lease lapsed; retry"))
        if msg_id is not None and self.applied is not None and msg_id in self.applied:
            self.log.info("turn.deduplicated", msg_id=msg_id)  # its effect is already in the state
            return Outcome(envelope, b"null", None)
        return None

    def _rollback(self, snapshot: bytes) -> None:
        model = self.agent_cls.state_model
        if self.agent is not None and model is not None:
            self.agent.state = model.model_validate_json(snapshot)
        self.current = snapshot
