"""One instance owned by this worker: its mailbox, its in-memory state and its turns.

Turns run strictly one after another from the mailbox. State is kept in memory between turns;
after each batch of turns taken from the mailbox it is written once with compare-and-set on the
revision this activation last wrote (group commit), and only then are the batch's replies sent.
So an acknowledged reply always describes saved state, and a worker that lost ownership can never
overwrite newer state: its write fails with a conflict and its callers get an error.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass
from random import getrandbits
from typing import TYPE_CHECKING, Any

import pydantic
import structlog

from mesh import subjects, wire
from mesh.agent import Agent
from mesh.context import TurnContext, current_turn
from mesh.dedupe import AppliedIds
from mesh.errors import (
    BadJson,
    MeshError,
    MeshTimeout,
    SchemaMismatch,
    StateInvalid,
    StateTooLarge,
    Unavailable,
)
from mesh.mail import InboundEmail
from mesh.methods import invoke_method
from mesh.observe import StateRecord
from mesh.tracing import child_traceparent

if TYPE_CHECKING:
    from mesh.runtime import Runtime


@dataclass(slots=True)
class Envelope:
    """A request as it waits in a mailbox."""

    data: bytes
    reply: str | None
    headers: dict[str, str]
    deadline: float | None


@dataclass(slots=True)
class Outcome:
    envelope: Envelope
    body: bytes | None
    error: MeshError | None
    turn: TurnContext | None = None  # the turn that ran, reported to observers once replied
    started: float = 0.0  # wall clock of the handler's start and end
    ended: float = 0.0


class Status(enum.Enum):
    PENDING = "pending"  # nobody here knows the owner yet
    OWNED = "owned"  # this worker owns the instance; turns run here
    REMOTE = "remote"  # another worker owns it; requests are forwarded there
    RELEASING = "releasing"  # being let go after idling; new requests wait for it


def decode_request(agent_cls: type[Agent[Any]], data: bytes) -> Any:
    try:
        return agent_cls.request_adapter.validate_json(data or b"null")
    except pydantic.ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadJson(f"body is not valid JSON: {exc.errors()[0]['msg']}") from exc
        raise SchemaMismatch(_summarize(exc)) from exc


async def run_handler(agent: Agent[Any], envelope: Envelope) -> Any:
    """Call the hook a request is for: `on_email` for mail (`Mesh-Mail` header), else `on_request`."""
    if envelope.headers.get(subjects.HEADER_MAIL):
        try:
            mail = InboundEmail.model_validate_json(envelope.data)
        except pydantic.ValidationError as exc:
            raise SchemaMismatch(_summarize(exc)) from exc
        return await agent.on_email(mail)
    method = envelope.headers.get(subjects.HEADER_METHOD)
    if method:
        return await invoke_method(agent, method, envelope.data)
    return await agent.on_request(decode_request(type(agent), envelope.data))


def _summarize(exc: pydantic.ValidationError) -> str:
    parts = [f"{'.'.join(map(str, e['loc'])) or '<body>'}: {e['msg']}" for e in exc.errors()[:5]]
    return "request does not match the schema: " + "; ".join(parts)


def new_turn_id() -> str:
    return f"{getrandbits(48):012x}"  # unique, not secret: no syscall per turn


class Activation:
    __slots__ = (
        "runtime",
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
    )

    def __init__(self, runtime: Runtime, agent_cls: type[Agent[Any]], name: str, key: str) -> None:
        self.runtime = runtime
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
        self.running = False
        self.last_used = time.monotonic()
        self.epoch = 0

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        log: structlog.typing.FilteringBoundLogger = self.runtime.log.bind(agent_type=self.agent_cls.type, agent_name=self.name)
        return log

    def deliver(self, envelope: Envelope) -> None:
        self.last_used = time.monotonic()
        if self.status is Status.REMOTE:
            self.runtime.forward(self, envelope)
            return
        if self.queue is None:
            self.queue = deque()
        self.queue.append(envelope)
        if not self.running:
            self.running = True
            self.runtime.start_now(self._drain())

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
            self.runtime.forget(self)

    async def _release(self) -> None:
        try:
            if self.agent is not None:
                try:
                    await self.agent.on_deactivate()
                except Exception:
                    self.log.exception("agent.deactivate_failed")
            await self.runtime.directory.release(self.key, self.dir_revision)
            if self.runtime.log_turns:
                self.log.debug("instance.released")
        finally:
            self.status = Status.PENDING
            self.agent = None
            if self.queue:  # requests arrived while releasing: activate again, off the eviction sweep
                self.running = True
                self.runtime.spawn(self._drain())
            else:
                self.running = False
                self.runtime.forget(self)

    async def _drain(self) -> None:
        try:
            limit = self.runtime.options.max_batch
            while self.queue:
                if self.status is Status.OWNED and self.epoch != self.runtime.directory.epoch:
                    self.status = Status.PENDING
                if self.status is Status.PENDING:
                    await self._activate()
                if self.status is Status.REMOTE:
                    while self.queue:
                        self.runtime.forward(self, self.queue.popleft())
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
                await self.runtime.reply(Outcome(self.queue.popleft(), None, err))
            self.runtime.forget(self)
        finally:
            self.running = False
            self.queue = None

    async def _activate(self) -> None:
        claim = await self.runtime.directory.resolve(self.key)
        if claim.owner != self.runtime.worker_id:
            self.status, self.owner = Status.REMOTE, claim.owner
            return
        self.dir_revision = claim.revision
        self.epoch = self.runtime.directory.epoch
        model = self.agent_cls.state_model
        assert model is not None
        # A fresh claim proves the instance was never activated: skip the read (one KV round trip of
        # three on a first touch). Should state exist anyway, the first save fails with a conflict.
        found = None if claim.fresh else await self.runtime.state.get_with_headers(self.key)
        self.applied_saved = "" if found is None else found[2].get(subjects.HEADER_APPLIED, "")
        self.applied = AppliedIds.from_header(self.applied_saved) if self.applied_saved else None
        if found is None:
            state = self.agent_cls.initial_state(self.name)
            self.state_revision = 0
            self.saved = self.current = _dump(state)
        else:
            try:
                state = model.model_validate_json(found[0])
            except pydantic.ValidationError as exc:
                raise StateInvalid(f"stored state of {self.key} does not match {model.__name__}: {exc}") from exc
            self.saved = self.current = found[0]
            self.state_revision = found[1]
        self.agent = self.agent_cls(self.name, state, self.runtime.client)
        self.status = Status.OWNED
        self.owner = self.runtime.worker_id
        await self.agent.on_activate()
        self.current = _dump(self.agent.state)  # what on_activate changed is saved with the next turn
        if self.runtime.log_turns:
            self.log.debug("instance.activated", revision=self.state_revision)

    async def _run_batch(self, batch: list[Envelope]) -> None:
        outcomes = [await self._turn(envelope) for envelope in batch]
        saved: StateRecord | None = None
        if self.current != self.saved or (self.applied is not None and self.applied.dirty):
            try:
                if self.runtime.directory.fenced():
                    raise Unavailable("worker lease lapsed before the state could be saved")
                if self.applied is not None and len(self.applied):
                    record = self.applied.header()
                    self.state_revision = await self.runtime.state.write_with_headers(
                        self.key, self.current, self.state_revision, {subjects.HEADER_APPLIED: record}
                    )
                    self.applied_saved, self.applied.dirty = record, False
                else:
                    self.state_revision = await self.runtime.state.write(self.key, self.current, self.state_revision)
                self.saved = self.current
                if self.runtime.observers:
                    saved = StateRecord(
                        self.agent_cls.type, self.name, self.runtime.worker_id, self.state_revision, len(self.saved), self.key
                    )
            except MeshError as err:
                self.log.warning("state.save_failed", code=err.code, error=err.message)
                for outcome in outcomes:
                    if outcome.error is None:
                        outcome.body, outcome.error = None, err
                self._rollback(self.saved)
                self.applied = AppliedIds.from_header(self.applied_saved) if self.applied_saved else None
                self.status = Status.PENDING  # reload state and re-check ownership before the next turn
        for outcome in outcomes:
            await self.runtime.reply(outcome)
        # Observers (metrics, the flight recorder) hear of the turns only now, so they never delay
        # a reply; a turn whose state could not be saved is reported with that error.
        if self.runtime.log_turns or self.runtime.observers:
            for outcome in outcomes:
                if outcome.turn is not None:
                    self.runtime.turn_finished(outcome.turn, outcome.started, outcome.ended, outcome.error)
        if saved is not None:
            for observer in self.runtime.observers:
                observer.on_state_saved(saved)

    async def _turn(self, envelope: Envelope) -> Outcome:
        agent = self.agent
        assert agent is not None
        now = time.monotonic()
        if envelope.deadline is not None and now > envelope.deadline:
            return Outcome(envelope, None, MeshTimeout("the caller's deadline passed before the turn started"))
        if self.runtime.directory.fenced():
            return Outcome(envelope, None, Unavailable("worker lease lapsed; retry"))
        msg_id = envelope.headers.get(subjects.HEADER_MSG_ID)
        if msg_id is not None and self.applied is not None and msg_id in self.applied:
            self.log.info("turn.deduplicated", msg_id=msg_id)  # its effect is already in the state
            return Outcome(envelope, b"null", None)
        turn = self.runtime.turn_context(self.agent_cls.type, self.name, self.key, envelope, self.runtime.log)
        token = current_turn.set(turn)
        started = time.time()
        before = self.current
        try:
            result = await run_handler(agent, envelope)
            body = wire.dumps(result)
            after = _dump(agent.state)
            if after != before:
                after = await self._accept_state(agent, before, after)
            self.current = after
            if msg_id is not None:
                if self.applied is None:
                    self.applied = AppliedIds()
                self.applied.add(msg_id)
            outcome = Outcome(envelope, body, None, turn, started, time.time())
            self.runtime.stats[self.agent_cls.type].turns += 1
        except Exception as exc:
            outcome = Outcome(envelope, None, self.runtime.as_mesh_error(exc, turn), turn, started, time.time())
            self._rollback(before)
        finally:
            current_turn.reset(token)
        return outcome

    async def _accept_state(self, agent: Agent[Any], before: bytes, after: bytes) -> bytes:
        model = self.agent_cls.state_model
        assert model is not None
        try:
            model.model_validate_json(after)
        except pydantic.ValidationError as exc:
            raise StateInvalid(f"the turn left state that fails {model.__name__} validation: {exc}") from exc
        if type(agent).on_state_changed is not Agent.on_state_changed:
            await agent.on_state_changed(model.model_validate_json(before))
            after = _dump(agent.state)
        limit = self.runtime.options.max_state_bytes
        if len(after) > limit:
            raise StateTooLarge(f"state would be {len(after)} bytes; the limit is {limit}")
        return after

    def _rollback(self, snapshot: bytes) -> None:
        model = self.agent_cls.state_model
        if self.agent is not None and model is not None:
            self.agent.state = model.model_validate_json(snapshot)
        self.current = snapshot


def _dump(state: Any) -> bytes:
    if isinstance(state, pydantic.BaseModel):
        return state.__pydantic_serializer__.to_json(state, warnings=False)
    return wire.dumps(state)


def make_turn_context(
    agent_type: str, name: str, key: str, envelope: Envelope, log: structlog.typing.FilteringBoundLogger
) -> TurnContext:
    incoming = envelope.headers.get(subjects.HEADER_CHAIN)
    chain = (*incoming.split(","), key) if incoming else (key,)
    return TurnContext(
        agent_type=agent_type,
        name=name,
        key=key,
        turn_id=new_turn_id(),
        traceparent=child_traceparent(envelope.headers.get(subjects.HEADER_TRACEPARENT)),
        chain=chain,
        deadline=envelope.deadline,
        base_log=log,
    )
