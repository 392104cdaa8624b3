"""Turn execution: the one place where an agent's handler runs, for stateless and stateful turns alike.

A turn is one call of an agent's hook for one request. `run_turn` builds the turn's context (trace,
call chain, deadline: `make_turn_context`), calls the hook the request is for (`run_handler`, which
decodes the body with `decode_request`), encodes the reply and turns any failure into a mesh error,
never raising. For an instance with state it also checks the state the handler left (schema,
`on_state_changed`, size limit) inside the turn, and hands it back in the `Outcome`; keeping or
rolling it back, saving it and deduplicating are the activation's business (`mesh.activation`).

`Turns` holds what every turn of a worker shares: the limits turns obey, the per-type counters,
and the reporting of a finished turn (debug log and observers), which callers do only after the
reply is sent. The runtime runs stateless turns with `run_turn` directly; an instance's mailbox
(`Activation`) runs its turns with it too. This module imports neither of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pydantic
import structlog

from mesh import connections, subjects, wire
from mesh.agent import Agent
from mesh.context import TurnContext, current_turn
from mesh.errors import AgentError, BadJson, MeshError, SchemaMismatch, StateInvalid, StateTooLarge
from mesh.mail import InboundEmail
from mesh.methods import invoke_method
from mesh.observe import Observer, TurnRecord
from mesh.request_ids import check_request_id
from mesh.tracing import child_traceparent


@dataclass(slots=True)
class Envelope:
    """A request on its way to a turn (waiting in a mailbox, or being forwarded)."""

    data: bytes
    reply: str | None
    headers: dict[str, str]
    deadline: float | None
    request_id: str | None = None  # its `Mesh-Request-Id`, once an instance's mailbox took it
    attached: list[Envelope] | None = None  # retries of the same request id: they get this one's outcome
    tell_owner: bool = False  # the caller did not address the owner's worker subject: the reply names it


@dataclass(slots=True)
class Outcome:
    """What a turn produced: the reply body or the error, and what observers hear once it is replied."""

    envelope: Envelope
    body: bytes | None
    error: MeshError | None
    turn: TurnContext | None = None  # the turn that ran (None when none did: deduplicated, too late, fenced)
    started: float = 0.0  # wall clock of the handler's start and end
    ended: float = 0.0
    state: bytes | None = None  # a stateful turn that succeeded: the state it left, checked


@dataclass(slots=True)
class TypeStats:
    turns: int = 0
    errors: int = 0


class Turns:
    """What the turns of one worker share: limits, counters per agent type, and their reporting."""

    __slots__ = ("worker_id", "log", "observers", "stats", "max_batch", "max_state_bytes", "log_turns", "stateless")

    def __init__(
        self,
        worker_id: str,
        log: structlog.typing.FilteringBoundLogger,
        observers: list[Observer],
        agent_types: Iterable[str],
        *,
        max_batch: int,
        max_state_bytes: int,
    ) -> None:
        self.worker_id = worker_id
        self.log = log  # the worker's logger; each turn binds its own on first use
        self.observers = observers
        self.stats = {t: TypeStats() for t in agent_types}
        self.max_batch = max_batch  # turns an instance runs before one state write (group commit)
        self.max_state_bytes = max_state_bytes
        self.log_turns = False  # debug logging of every turn; decided when the worker starts
        self.stateless: dict[str, Envelope] = {}  # "<key> <request id>" -> the stateless turn running it here

    def join_stateless(self, key: str, envelope: Envelope) -> bool:
        """For a stateless request with a request id: True when a request with the same id (to the
        same instance) is running on this worker, and this one is attached to it (its caller gets
        that turn's outcome, see `leave_stateless`). Stateless agents keep no ids beyond that: a
        retry that reaches another worker, or comes later, runs again."""
        request_id = envelope.headers.get(subjects.HEADER_REQUEST_ID)
        if request_id is None:
            return False
        running = f"{key} {request_id}"
        first = self.stateless.get(running)
        if first is None:
            envelope.request_id = running
            self.stateless[running] = envelope
            return False
        if first.attached is None:
            first.attached = []
        first.attached.append(envelope)
        return True

    def leave_stateless(self, envelope: Envelope) -> list[Envelope]:
        """The turn of `envelope` ended: the requests attached to it, to be answered the same."""
        if envelope.request_id is None:
            return []
        if self.stateless.get(envelope.request_id) is envelope:
            del self.stateless[envelope.request_id]
        attached, envelope.attached = envelope.attached or [], None
        return attached

    def failed(self, exc: Exception, turn: TurnContext) -> MeshError:
        """Count a failed turn, log it, and return the error its caller receives."""
        stats = self.stats[turn.agent_type]
        stats.turns += 1
        stats.errors += 1
        if isinstance(exc, MeshError):
            turn.log.info("turn.failed", code=exc.code, error=exc.message)
            return exc
        turn.log.error("turn.failed", code=AgentError.code, exc_info=exc)
        return AgentError(f"{type(exc).__name__}: {exc}")

    def finished(self, outcome: Outcome) -> None:
        """Log the turn (at debug) and tell the observers; call it only once the reply is out, and
        only when `log_turns` or `observers` wants it (so a quiet worker pays nothing)."""
        turn = outcome.turn
        if turn is None:
            return
        error = outcome.error
        code = error.code if error else "ok"
        if self.log_turns:
            turn.log.debug("turn.finished", started_at=outcome.started, ended_at=outcome.ended, outcome=code)
        if self.observers:
            record = TurnRecord(
                turn.agent_type,
                turn.name,
                self.worker_id,
                turn.turn_id,
                turn.traceparent,
                outcome.started,
                outcome.ended,
                code,
                error.message if error else None,
                turn.chain[-2] if len(turn.chain) > 1 else None,
                turn.key,
            )
            for observer in self.observers:
                observer.on_turn(record)


async def run_turn(turns: Turns, agent: Agent[Any], key: str, envelope: Envelope, state: bytes | None = None) -> Outcome:
    """Run one turn of `agent` for `envelope`; never raises.

    `state` is the instance's state before the turn (None for an agent without state). A turn that
    changes it has the new state checked here, within the turn, and a successful outcome carries it
    in `Outcome.state`; a failed one leaves the rollback to the caller.
    """
    turn = make_turn_context(agent.type, agent.name, key, envelope, turns.log)
    token = current_turn.set(turn)
    started = time.time()
    try:
        if state is None and subjects.HEADER_REQUEST_ID in envelope.headers:  # checked, not kept: no records
            check_request_id(envelope.headers[subjects.HEADER_REQUEST_ID])
        body = wire.dumps(await run_handler(agent, envelope))
        if state is not None:
            after = dump_state(agent.state)
            if after != state:
                state = await _accept_state(agent, state, after, turns.max_state_bytes)
        turns.stats[agent.type].turns += 1
        return Outcome(envelope, body, None, turn, started, time.time(), state)
    except Exception as exc:
        return Outcome(envelope, None, turns.failed(exc, turn), turn, started, time.time())
    finally:
        current_turn.reset(token)


async def run_handler(agent: Agent[Any], envelope: Envelope) -> Any:
    """Call the hook a request is for: `on_email` for mail (`Mesh-Mail` header), a connection's
    `on_connect`/`on_message`/`on_close` (`Mesh-Connection`), a method (`Mesh-Method`), else `on_request`."""
    if envelope.headers.get(subjects.HEADER_MAIL):
        try:
            mail = InboundEmail.model_validate_json(envelope.data)
        except pydantic.ValidationError as exc:
            raise SchemaMismatch(_summarize(exc)) from exc
        return await agent.on_email(mail)
    if subjects.HEADER_CONNECTION in envelope.headers:
        return await connections.dispatch(agent, agent.connection_registry(), envelope.headers, envelope.data)
    method = envelope.headers.get(subjects.HEADER_METHOD)
    if method:
        wire.check_integers(envelope.data)
        return await invoke_method(agent, method, envelope.data)
    return await agent.on_request(decode_request(type(agent), envelope.data))


def decode_request(agent_cls: type[Agent[Any]], data: bytes) -> Any:
    """The request model of `agent_cls` from a body; `BadJson` or `SchemaMismatch` if it is not one
    (an integer beyond 64 bits is refused as on every door: `wire.check_integers`)."""
    wire.check_integers(data)
    try:
        return agent_cls.request_adapter.validate_json(data or b"null")
    except pydantic.ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadJson(f"body is not valid JSON: {exc.errors()[0]['msg']}") from exc
        raise SchemaMismatch(_summarize(exc)) from exc


def make_turn_context(
    agent_type: str, name: str, key: str, envelope: Envelope, log: structlog.typing.FilteringBoundLogger
) -> TurnContext:
    """The context a turn passes on to the calls it makes: a child of the caller's trace, the call
    chain with this instance appended, the caller's deadline."""
    incoming = envelope.headers.get(subjects.HEADER_CHAIN)
    chain = (*incoming.split(","), key) if incoming else (key,)
    traceparent = child_traceparent(envelope.headers.get(subjects.HEADER_TRACEPARENT))
    return TurnContext(
        agent_type=agent_type,
        name=name,
        key=key,
        turn_id=traceparent[36:48],  # 48 random bits of the turn's new span id: unique, and no second draw
        traceparent=traceparent,
        chain=chain,
        deadline=envelope.deadline,
        base_log=log,
        deadline_ms=envelope.headers.get(subjects.HEADER_DEADLINE),
    )


def dump_state(state: Any) -> bytes:
    """An instance's state as the bytes that are stored (and compared, to see whether a turn changed it)."""
    if isinstance(state, pydantic.BaseModel):
        return state.__pydantic_serializer__.to_json(state, warnings=False)
    return wire.dumps(state)


async def _accept_state(agent: Agent[Any], before: bytes, after: bytes, limit: int) -> bytes:
    model = agent.state_model
    assert model is not None
    try:
        model.model_validate_json(after)
    except pydantic.ValidationError as exc:
        raise StateInvalid(f"the turn left state that fails {model.__name__} validation: {exc}") from exc
    if type(agent).on_state_changed is not Agent.on_state_changed:
        await agent.on_state_changed(model.model_validate_json(before))
        after = dump_state(agent.state)
    if len(after) > limit:
        raise StateTooLarge(f"state would be {len(after)} bytes; the limit is {limit}")
    return after


def _summarize(exc: pydantic.ValidationError) -> str:
    parts = [f"{'.'.join(map(str, e['loc'])) or '<body>'}: {e['msg']}" for e in exc.errors()[:5]]
    return "request does not match the schema: " + "; ".join(parts)
