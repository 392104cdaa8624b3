"""The LLM agent kind: an OpenAI Agents SDK agent living in a mesh instance.

    class Triage(LLMAgent):
        type = "triage"

        def build_agent(self) -> agents.Agent[Any]:
            return agents.Agent(name="Triage Agent", handoffs=[history, math], model=...)

A request is a user message (a string, or the SDK's input items); the reply is an `LLMReply`
with the final output, the SDK agent that produced it (after handoffs), usage and a run id. The
same subject also takes control messages (`{"op": "approvals" | "approve" | "reject" | "expire"
| "clear_memory", ...}`), so approvals are decided in the instance's own turn order, on whichever
worker owns it, with no client of the original request connected (see subjects.md).

Each instance's conversation lives in `MemorySession` (a JetStream subject, not the state);
paused runs live in `RunStore` (object store); the instance state (`LLMState`) keeps only the
small records: pending approvals, decisions and recent run outcomes.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field

from mesh import subjects, wire
from mesh._nats import Connection
from mesh.agent import Agent
from mesh.approvals import (
    Decision,
    LLMState,
    PendingApproval,
    RunRecord,
    RunStore,
    expiry_after,
    new_approval_id,
    new_run_id,
    now,
)
from mesh.context import current_turn
from mesh.errors import AgentError, ApprovalDecided, ApprovalNotFound, ApprovalPending, MeshError, RequestError
from mesh.mcp_servers import McpServers
from mesh.memory import DEFAULT_MAX_ITEMS, MemorySession, open_memory_stream
from mesh.metrics import APPROVALS_PENDING
from mesh.tasks import TaskSet
from mesh.tools import current_client
from mesh.tracing import trace_id

if TYPE_CHECKING:  # the SDK takes seconds to import; workers without LLM agents never pay for it
    import agents
    from agents import RunState
    from agents.mcp import MCPServer

OFFLINE_LABEL = "offline-demo"

MAX_STORED_OUTPUT = 16 * 1024


class _Control(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ask(_Control):
    """A user message in object form."""

    op: Literal["message"]
    input: str | list[dict[str, Any]] = Field(description="A string, or the SDK's input items.")
    run_id: str | None = Field(
        default=None,
        pattern=r"^run_[A-Za-z0-9_-]{1,60}$",
        description="The run's id, chosen by the caller so it can follow the run's events from the first one.",
    )


class ListApprovals(_Control):
    op: Literal["approvals"]


class Approve(_Control):
    op: Literal["approve"]
    id: str
    by: str = Field(default="unknown", description="Who decided (recorded with the decision).")
    reason: str | None = None


class Reject(_Control):
    op: Literal["reject"]
    id: str
    by: str = "unknown"
    reason: str | None = Field(default=None, description="Told to the model as the tool's result.")


class Expire(_Control):
    """Sent by the instance to itself when an approval's time is up; anyone may send it."""

    op: Literal["expire"]


class ClearMemory(_Control):
    op: Literal["clear_memory"]


Control = Annotated[Ask | ListApprovals | Approve | Reject | Expire | ClearMemory, Field(discriminator="op")]
LLMRequest = str | list[dict[str, Any]] | Control


class Usage(BaseModel):
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class LLMReply(BaseModel):
    """What an LLM instance answers to a message, an approval decision or a resumed run."""

    status: Literal["completed", "awaiting_approval", "failed"]
    run_id: str
    output: Any = Field(default=None, description="The run's final output (None while it awaits approval).")
    agent: str = Field(description="The SDK agent that produced the output, after handoffs.")
    model: str = Field(description=f"The model's name; `{OFFLINE_LABEL}` for the offline demo model.")
    usage: Usage = Field(default_factory=Usage)
    approvals: list[PendingApproval] = Field(default_factory=list, description="Open approvals of this run.")
    decision: Decision | None = None


class ApprovalsReply(BaseModel):
    pending: list[PendingApproval]
    decisions: list[Decision]


class LLMAgent(Agent[LLMState]):
    """Base class of LLM agent types: subclass it, set `type`, write `build_agent`."""

    memory_max_items: ClassVar[int] = DEFAULT_MAX_ITEMS
    """Conversation items an instance keeps (older ones are dropped)."""
    approval_ttl: ClassVar[float] = 3600.0
    """Seconds a pending approval waits before it is rejected by `expiry`."""
    max_turns: ClassVar[int] = 10
    stream: ClassVar[bool] = True
    """Publish each run's progress (text deltas included) as events: the run is streamed with the
    SDK's streaming, unless every model of the agents writes its answers whole (the offline demo
    model), whose runs publish the same events from hooks without the cost of streaming."""
    mcp_connect_timeout: ClassVar[float] = 10.0
    """Seconds an MCP server may take to connect (a run waits at most until the turn's deadline)."""

    def build_agent(self) -> agents.Agent[Any]:
        """The SDK entry agent of this type; every run (and every resumed run) starts here."""
        raise NotImplementedError(f"{type(self).__name__} must define build_agent")

    def build_mcp_servers(self) -> Sequence[MCPServer]:
        """The MCP servers this instance's SDK agents use (openai-agents' `MCPServerStreamableHttp`,
        `MCPServerStdio`, ...): pass `self.mcp_servers` to `agents.Agent(mcp_servers=...)` in
        `build_agent`. They are connected when the instance activates and closed when it is evicted
        or the worker stops; a server that is down or hangs fails the run with an error naming it,
        within the turn's deadline. A tool that needs approval (`require_approval=...`) pauses the
        run like any other, through the mesh's durable approvals."""
        return ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key = subjects.instance_key(self.type, self.name)
        self._sdk_agent: agents.Agent[Any] | None = None
        self._session: MemorySession | None = None
        self._pieces: bool | None = None
        self._runs: RunStore | None = None
        self._timer: asyncio.Task[None] | None = None
        self._usage_seen: dict[str, Usage] = {}
        self._pending_counted = 0
        self._mcp: McpServers | None = None
        self._own_tasks: TaskSet | None = None  # outside a worker: holds the MCP connections

    @property
    def sdk_agent(self) -> agents.Agent[Any]:
        if self._sdk_agent is None:
            self._sdk_agent = self.build_agent()
        return self._sdk_agent

    def _streams_pieces(self) -> bool:
        """Whether a model of this instance's agents writes its answers piece by piece (see `stream`)."""
        if self._pieces is None:
            from mesh.llm_progress import writes_whole_answers

            self._pieces = not writes_whole_answers(self.sdk_agent)
        return self._pieces

    @property
    def mcp_servers(self) -> list[MCPServer]:
        """This instance's MCP servers (built once from `build_mcp_servers`), for `build_agent`."""
        return self._mcp_links().servers

    def _mcp_links(self) -> McpServers:
        if self._mcp is None:
            tasks = self._background
            if tasks is None:
                tasks = self._own_tasks = TaskSet(self.log)
            log = structlog.get_logger("mesh.mcp").bind(agent_type=self.type, agent_name=self.name)
            self._mcp = McpServers(self.build_mcp_servers(), tasks, connect_timeout=self.mcp_connect_timeout, log=log)
        return self._mcp

    def session(self) -> MemorySession:
        """This instance's conversation memory (one object per activation: it counts what it holds)."""
        if self._session is None:
            self._session = MemorySession(self.mesh.nc, self.type, self.name, max_items=self.memory_max_items)
        return self._session

    async def on_activate(self) -> None:
        if not _sdk_imported():
            # The first import of the SDK takes seconds of CPU: do it off the event loop so other
            # instances and the worker's lease heartbeat keep running meanwhile.
            await asyncio.to_thread(_import_sdk)
        from mesh.models import model_label

        self._runs = await _stores_of(self.mesh.nc)
        self._mcp_links().start()  # connecting meanwhile; a run waits for them
        model = model_label(self.sdk_agent.model)
        self.log.info("llm.activated", model=model, offline=model == OFFLINE_LABEL, pending=len(self.state.pending))
        self._arm_timer()
        self._count_pending()

    async def on_state_changed(self, previous: LLMState) -> None:
        self._count_pending()

    async def on_deactivate(self) -> None:
        # The expiry timer outlives the activation on purpose: an instance evicted for idling
        # still has its approvals expire, since the timer's message activates it again. It is a
        # task of the worker (`_background`), so it ends when the worker stops.
        self._count_pending(owned=False)
        if self._mcp is not None:
            await self._mcp.close()
        if self._own_tasks is not None:
            await self._own_tasks.cancel_all()

    def _count_pending(self, *, owned: bool = True) -> None:
        """Keep `mesh_approvals_pending` equal to the open approvals of the instances this worker owns."""
        now = sum(1 for p in self.state.pending if p.decision is None) if owned else 0
        APPROVALS_PENDING.labels(self.type).inc(now - self._pending_counted)
        self._pending_counted = now

    async def on_request(self, request: LLMRequest) -> Any:
        token = current_client.set(self.mesh)
        try:
            if isinstance(request, Expire):
                await self._expire_overdue()
            if isinstance(request, (str, list)):
                return await self._ask(request)
            if isinstance(request, Ask):
                return await self._ask(request.input, request.run_id)
            if isinstance(request, (Approve, Reject)):
                decision: Literal["approve", "reject"] = "approve" if isinstance(request, Approve) else "reject"
                return await self._decide(request.id, decision, request.by, request.reason)
            if isinstance(request, ClearMemory):
                await self.session().clear_session()
                self.log.info("memory.cleared")
                return {"cleared": True}
            return ApprovalsReply(pending=self.state.pending, decisions=self.state.decisions)
        finally:
            current_client.reset(token)
            self._arm_timer()

    # -- runs ---------------------------------------------------------------------------------

    async def _ask(self, user_input: str | list[dict[str, Any]], run_id: str | None = None) -> LLMReply:
        at = now()
        waiting = [p for p in self.state.pending if p.decision is None and p.expires_at > at]
        if waiting:
            raise ApprovalPending(
                f"{self.type}/{self.name} has a run awaiting approval ({', '.join(p.id for p in waiting)}); "
                "approve or reject it first"
            )
        await self._expire_overdue()
        if run_id is not None and any(r.run_id == run_id for r in self.state.runs):
            raise RequestError(f"run id {run_id} was already used by {self.type}/{self.name}")
        run_id = run_id or new_run_id()
        self.state.record_run(RunRecord(run_id=run_id, status="running", agent=self.sdk_agent.name, started_at=now()))
        return await self._run(user_input, run_id)

    async def _run(self, run_input: str | list[Any] | RunState[Any], run_id: str) -> LLMReply:
        from agents import RunConfig, Runner, RunState

        from mesh.llm_progress import ProgressHooks
        from mesh.models import model_label
        from mesh.sdk_tracing import ensure_sdk_tracing

        ensure_sdk_tracing()
        turn = current_turn.get()
        mesh_trace = trace_id(turn.traceparent) if turn else None
        config = RunConfig(
            workflow_name=f"{self.type}/{self.name}",
            group_id=self.key,
            trace_id=f"trace_{mesh_trace}" if mesh_trace else None,
            trace_metadata={"instance": self.key, "run_id": run_id},
        )
        session = self.session()
        resumed = isinstance(run_input, RunState)
        if not resumed:  # a resumed run's servers were made ready before its state was loaded
            await self._mcp_ready(run_id)
        try:
            if self.stream and self._streams_pieces():
                streamed = Runner.run_streamed(
                    self.sdk_agent, run_input, session=session, run_config=config, max_turns=self.max_turns
                )
                try:
                    async for event in streamed.stream_events():
                        await self._publish_progress(run_id, event)
                except asyncio.CancelledError:
                    streamed.cancel()  # the run's tasks end with the turn, wherever the cancellation hit it
                    raise
                result: agents.RunResultBase = streamed
            else:
                hooks = ProgressHooks(run_id, self.emit) if self.stream else None
                result = await Runner.run(
                    self.sdk_agent, run_input, session=session, run_config=config, max_turns=self.max_turns, hooks=hooks
                )
        except MeshError:
            raise
        except Exception as exc:
            if self._mcp is not None:
                self._mcp.reset()  # the failure may have broken a connection: open new ones next run
            await self.emit("run_failed", {"run_id": run_id, "error": f"{type(exc).__name__}: {exc}"})
            raise AgentError(f"LLM run {run_id} failed: {type(exc).__name__}: {exc}") from exc
        usage = self._account(run_id, result)
        last = result.last_agent
        model = model_label(last.model)
        record = next((r for r in self.state.runs if r.run_id == run_id), None) or RunRecord(
            run_id=run_id, status="running", agent=last.name, started_at=now()
        )
        if result.interruptions:
            return await self._pause(run_id, result, record, usage, model)
        output = result.final_output
        text = output if isinstance(output, str) else wire.dumps(output).decode()
        self.state.record_run(
            record.model_copy(
                update={
                    "status": "completed",
                    "agent": last.name,
                    "output": text[:MAX_STORED_OUTPUT],
                    "finished_at": now(),
                }
            )
        )
        if resumed and self._runs is not None:
            await self._runs.delete(self.key, run_id)
        await self.emit("run_completed", {"run_id": run_id, "agent": last.name, "model": model, "output": output})
        self.log.info(
            "llm.run_completed",
            run_id=run_id,
            agent=last.name,
            model=model,
            offline=model == OFFLINE_LABEL,
            requests=usage.requests,
        )
        return LLMReply(status="completed", run_id=run_id, output=output, agent=last.name, model=model, usage=usage)

    async def _pause(self, run_id: str, result: agents.RunResultBase, record: RunRecord, usage: Usage, model: str) -> LLMReply:
        assert self._runs is not None
        await self._runs.save(self.key, run_id, result.to_state().to_string())
        at = now()
        new = [
            PendingApproval(
                id=new_approval_id(),
                run_id=run_id,
                tool=item.name or "?",
                arguments=item.arguments or "",
                call_id=_call_id(item),
                agent=item.agent.name,
                requested_at=at,
                expires_at=expiry_after(self.approval_ttl, at),
            )
            for item in result.interruptions
        ]
        self.state.pending = [*self.state.pending, *new]
        self.state.record_run(record.model_copy(update={"status": "awaiting_approval", "agent": result.last_agent.name}))
        for approval in new:
            await self.emit("approval_requested", approval.model_dump(mode="json"))
            self.log.info("approval.requested", approval_id=approval.id, run_id=run_id, tool=approval.tool)
        return LLMReply(
            status="awaiting_approval",
            run_id=run_id,
            agent=result.last_agent.name,
            model=model,
            usage=usage,
            approvals=new,
        )

    async def _mcp_ready(self, run_id: str) -> None:
        """Wait for this instance's MCP servers, at most until the turn's deadline (`AgentError`)."""
        if not self.mcp_servers:
            return
        turn = current_turn.get()
        try:
            await self._mcp_links().ready(turn.deadline if turn is not None else None)
        except AgentError as err:
            await self.emit("run_failed", {"run_id": run_id, "error": err.message})
            raise

    def _account(self, run_id: str, result: agents.RunResultBase) -> Usage:
        sdk = result.context_wrapper.usage
        usage = Usage(
            requests=sdk.requests, input_tokens=sdk.input_tokens, output_tokens=sdk.output_tokens, total_tokens=sdk.total_tokens
        )
        # A resumed run's usage includes what it used before the pause; count only the new part.
        before = self._usage_seen.pop(run_id, Usage())
        self.state.requests += usage.requests - before.requests
        self.state.input_tokens += usage.input_tokens - before.input_tokens
        self.state.output_tokens += usage.output_tokens - before.output_tokens
        return usage

    async def _publish_progress(self, run_id: str, event: Any) -> None:
        from agents.stream_events import AgentUpdatedStreamEvent, RawResponsesStreamEvent, RunItemStreamEvent

        if isinstance(event, AgentUpdatedStreamEvent):
            await self.emit("agent_switched", {"run_id": run_id, "agent": event.new_agent.name})
        elif isinstance(event, RunItemStreamEvent):
            item = event.item
            if event.name == "tool_called":
                raw = item.raw_item
                name = raw.get("name") if isinstance(raw, dict) else getattr(raw, "name", None)
                arguments = raw.get("arguments") if isinstance(raw, dict) else getattr(raw, "arguments", None)
                await self.emit("tool_called", {"run_id": run_id, "agent": item.agent.name, "tool": name, "arguments": arguments})
            elif event.name == "tool_output":
                await self.emit(
                    "tool_output", {"run_id": run_id, "agent": item.agent.name, "output": str(getattr(item, "output", ""))[:4096]}
                )
            elif event.name == "message_output_created":
                # The message is complete (its text deltas came before this); memory stores it
                # when the model turn ends, before the next turn writes anything.
                await self.emit("message_output", {"run_id": run_id, "agent": item.agent.name})
            elif event.name == "handoff_occured":
                await self.emit(
                    "handoff",
                    {"run_id": run_id, "from": item.agent.name, "to": getattr(getattr(item, "target_agent", None), "name", None)},
                )
        elif isinstance(event, RawResponsesStreamEvent) and event.data.type == "response.output_text.delta":
            await self.emit("text_delta", {"run_id": run_id, "delta": getattr(event.data, "delta", "")})

    # -- approvals ----------------------------------------------------------------------------

    async def _decide(self, approval_id: str, decision: Literal["approve", "reject"], by: str, reason: str | None) -> LLMReply:
        approval = next((p for p in self.state.pending if p.id == approval_id), None)
        if approval is None or approval.decision is not None:
            done = self.state.find_decision(approval_id)
            if done is not None:
                raise ApprovalDecided(
                    f"approval {approval_id} was already {done.decision}d by {done.by} at {done.decided_at.isoformat()}"
                )
            raise ApprovalNotFound(f"{self.type}/{self.name} has no approval {approval_id!r}")
        if approval.expires_at <= now():
            # Settled by the instance's own `expire` turn (armed for exactly this), not here: an
            # error reply discards this turn's state changes.
            raise ApprovalDecided(
                f"approval {approval_id} expired at {approval.expires_at.isoformat()}; it is rejected on expiry"
            )
        recorded = await self._record(approval, decision, by, reason)
        reply = await self._resume_if_decided(approval.run_id)
        reply.decision = recorded
        return reply

    async def _record(
        self, approval: PendingApproval, decision: Literal["approve", "reject"], by: str, reason: str | None
    ) -> Decision:
        approval.decision, approval.reason, approval.decided_by = decision, reason, by
        recorded = Decision(
            id=approval.id,
            run_id=approval.run_id,
            tool=approval.tool,
            arguments=approval.arguments,
            decision=decision,
            by=by,
            reason=reason,
            decided_at=now(),
        )
        self.state.record_decision(recorded)
        self.log.info("approval.decided", approval_id=approval.id, decision=decision, by=by)
        await self.emit("approval_decided", recorded.model_dump(mode="json"))
        return recorded

    async def _resume_if_decided(self, run_id: str) -> LLMReply:
        from agents import RunState

        from mesh.models import model_label

        of_run = [p for p in self.state.pending if p.run_id == run_id]
        still_open = [p for p in of_run if p.decision is None]
        if still_open:
            return LLMReply(
                status="awaiting_approval",
                run_id=run_id,
                agent=of_run[0].agent,
                model=model_label(self.sdk_agent.model),
                approvals=still_open,
            )
        self.state.pending = [p for p in self.state.pending if p.run_id != run_id]
        assert self._runs is not None
        await self._mcp_ready(run_id)  # loading the paused run lists the agents' tools, MCP ones too
        blob = await self._runs.load(self.key, run_id)
        problem = f"the paused run {run_id} has no stored snapshot" if blob is None else None
        if blob is not None:
            try:
                state = await RunState.from_string(self.sdk_agent, blob)
            except Exception as exc:  # e.g. the agent's tools changed since the run paused
                problem = f"the paused run {run_id} no longer loads: {type(exc).__name__}: {exc}"
        if problem is not None:
            # Settle the run as failed rather than leave its approvals pending forever.
            record = next((r for r in self.state.runs if r.run_id == run_id), None)
            if record is not None:
                self.state.record_run(record.model_copy(update={"status": "failed", "output": problem, "finished_at": now()}))
            await self.emit("run_failed", {"run_id": run_id, "error": problem})
            self.log.warning("llm.resume_failed", run_id=run_id, error=problem)
            return LLMReply(
                status="failed", run_id=run_id, output=problem, agent=of_run[0].agent, model=model_label(self.sdk_agent.model)
            )
        by_call = {p.call_id: p for p in of_run}
        assert blob is not None
        usage = _paused_usage(blob)
        if usage is not None:
            self._usage_seen[run_id] = usage
        for item in state.get_interruptions():
            decided = by_call.get(_call_id(item))
            if decided is not None and decided.decision == "approve":
                state.approve(item)
            else:
                state.reject(item, rejection_message=_rejection_text(decided))
        if not any(r.run_id == run_id for r in self.state.runs):
            self.state.record_run(
                RunRecord(run_id=run_id, status="running", agent=of_run[0].agent, started_at=of_run[0].requested_at)
            )
        return await self._run(state, run_id)

    async def _expire_overdue(self) -> None:
        at = now()
        expired = self.state.expired(at)
        for approval in expired:
            await self._record(approval, "reject", "expiry", f"approval expired at {approval.expires_at.isoformat()}")
        for run_id in dict.fromkeys(p.run_id for p in expired):
            try:
                await self._resume_if_decided(run_id)
            except MeshError as err:
                self.log.warning("approval.expiry_resume_failed", run_id=run_id, code=err.code, error=err.message)

    def _arm_timer(self) -> None:
        """Wake this instance when its next approval expires (until this worker stops).

        The timer is a task of the hosting worker: outside a worker there is nothing to own it, and
        approvals expire when the instance next runs a turn.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.state.next_expiry()
        if due is None or self._background is None:
            return
        delay = max(0.0, (due - now()).total_seconds()) + 0.05
        # A fresh context: the timer's message must not carry this turn's deadline or call chain.
        self._timer = self._background.spawn(self._wake_later(delay), context=contextvars.Context())

    async def _wake_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.mesh.send(self.type, self.name, {"op": "expire"})
        except MeshError as err:
            self.log.warning("approval.expiry_wake_failed", code=err.code, error=err.message)


_SDK_MODULES = ("agents", "mesh.models", "mesh.sdk_tracing", "mesh.llm_progress")


def _import_sdk() -> None:
    for module in _SDK_MODULES:
        importlib.import_module(module)


def _sdk_imported() -> bool:
    return all(module in sys.modules for module in _SDK_MODULES)


_STORES = "_mesh_llm_stores"
"""The attribute of a connection holding its `_Stores` (on the object itself: a weak mapping's
value would keep its key alive, since the stores refer to the connection)."""


class _Stores:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.runs: RunStore | None = None


async def _stores_of(nc: Connection) -> RunStore:
    """The memory stream and the paused-run store, made ready once per connection rather than at
    each activation (each is a JetStream request or more); an attempt that fails is made again by
    the next activation. A store lost later is re-created by the connection's healer."""
    stores = getattr(nc, _STORES, None)
    if not isinstance(stores, _Stores):
        stores = _Stores()
        setattr(nc, _STORES, stores)
    if stores.runs is None:
        async with stores.lock:
            if stores.runs is None:
                stores.runs = await _open_stores(nc)
    return stores.runs


async def _open_stores(nc: Connection) -> RunStore:
    js = nc.jetstream()
    await open_memory_stream(js)
    return await RunStore.open(js)


def _paused_usage(blob: str) -> Usage | None:
    """What a paused run had used, read from its snapshot (the SDK's documented RunState JSON,
    `context.usage`) rather than from the RunState's private `_context`."""
    try:
        return Usage.model_validate(orjson.loads(blob)["context"]["usage"])
    except (ValueError, KeyError, TypeError):  # orjson's and pydantic's errors are ValueErrors
        return None


def _call_id(item: Any) -> str:
    raw = getattr(item, "raw_item", None)
    value = raw.get("call_id") if isinstance(raw, dict) else getattr(raw, "call_id", None)
    return str(value or getattr(item, "call_id", "") or "")


def _rejection_text(approval: PendingApproval | None) -> str:
    if approval is None:
        return "The tool call was not approved."
    who = "on expiry" if approval.decided_by == "expiry" else f"by {approval.decided_by}"
    reason = f" (reason: {approval.reason})" if approval.reason else ""
    return f"The tool call was rejected {who}{reason}. The tool did not run."
