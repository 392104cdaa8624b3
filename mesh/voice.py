"""Agents you can call on the phone: an agent type that declares a realtime voice agent.

    class Receptionist(VoiceAgent):
        type = "receptionist"

        def realtime_agent(self) -> RealtimeAgent:
            return RealtimeAgent(
                name="Receptionist",
                instructions="Greet the caller; hand questions to the tutors.",
                tools=[agent_tool("triage", name="ask_tutors", instance="phone", description="...")],
            )

A call reaches the instance as a connection of kind `media-stream` (`mesh.connections`). The
realtime session (the OpenAI Agents SDK's `RealtimeSession`, g711 mu-law both ways) runs on the
bridge that holds Twilio's media stream, next to the audio (subjects.md, "Phone calls", says why).
The instance stays the one place where the call's state and tools live, through turns:

- `connect` (Twilio's `start`): a call record `calls[<callSid>]` is created, and the reply is the
  session's spec: the realtime agent's name, instructions, voice and each function tool's name,
  description, JSON schema and whether it needs approval. The bridge builds its session from it.
- `message` events of the call's connection, JSON from the bridge:
  `{"type": "transcript", "role", "text"}` appends to the call's transcript (text only, never audio);
  `{"type": "tool", "call_id", "name", "arguments"}` runs the tool here, inside the turn (so an
  `agent_tool` calls other agents with this turn's trace and deadline), and replies its output;
  `{"type": "approval", "call_id", "name", "arguments"}` records a pending approval (the dashboard's
  Approve/Reject, or `{"op": "approve"|"reject", "id"}`); the decision goes back to the bridge as a
  frame on the call's connection, and the session runs the tool (or tells the model it was rejected).
- `close` (the call ended, or its bridge died): `ended_at` is set and its pending approvals dropped.

Only function tools (`agents.FunctionTool`, which `agent_tool` makes) are offered to the model;
handoffs between realtime agents are not (the session lives on the bridge, the agents here).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from mesh.agent import Agent
from mesh.approvals import new_approval_id
from mesh.connections import MEDIA_STREAM, Connection
from mesh.errors import ApprovalDecided, ApprovalNotFound, ConnectionGone, RequestError, SchemaMismatch
from mesh.tools import current_client

if TYPE_CHECKING:
    from agents import FunctionTool
    from agents.realtime import RealtimeAgent

MAX_CALLS = 20
"""Calls kept in the state (the oldest go first)."""
MAX_TRANSCRIPT = 400
"""Transcript entries kept per call."""
MAX_DECISIONS = 50


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class TranscriptEntry(BaseModel):
    role: str
    text: str


class Call(BaseModel):
    """One phone call: `calls[<callSid>]` in the state."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    started_at: str
    ended_at: str | None = None
    caller: str = Field(default="", alias="from", description="The caller's number (Twilio's From).")
    transcript: list[TranscriptEntry] = Field(default_factory=list)


class CallApproval(BaseModel):
    """A tool call of a running call, waiting for a person."""

    id: str
    call_sid: str
    connection: str
    call_id: str = Field(description="The model's tool call id.")
    tool: str
    arguments: str
    agent: str
    requested_at: str


class CallDecision(CallApproval):
    decision: Literal["approve", "reject"]
    by: str
    reason: str | None = None
    decided_at: str


class VoiceState(BaseModel):
    calls: dict[str, Call] = Field(default_factory=dict)
    approvals: list[CallApproval] = Field(default_factory=list)
    decisions: list[CallDecision] = Field(default_factory=list)


class ListApprovals(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["approvals"]


class Decide(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["approve", "reject"]
    id: str
    by: str = "api"
    reason: str | None = None


class ListCalls(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["calls"]


VoiceRequest = Annotated[ListApprovals | Decide | ListCalls, Field(discriminator="op")]


class Transcript(BaseModel):
    type: Literal["transcript"]
    role: Literal["user", "assistant"]
    text: str = Field(max_length=20000)


class ToolCall(BaseModel):
    type: Literal["tool", "approval"]
    call_id: str
    name: str
    arguments: str = "{}"


CallEvent = Annotated[Transcript | ToolCall, Field(discriminator="type")]
CALL_EVENTS: TypeAdapter[Transcript | ToolCall] = TypeAdapter(CallEvent)


class VoiceAgent(Agent[VoiceState]):
    """An agent type with a phone line: override `realtime_agent`. `voice` picks the model's voice;
    `greeting` makes the agent speak first when a call starts."""

    voice: ClassVar[str | None] = None
    greeting: ClassVar[bool] = True

    def realtime_agent(self) -> RealtimeAgent[Any]:
        """The realtime agent that talks to callers (built for every call, and for every tool run)."""
        raise NotImplementedError(f"{type(self).__name__} must define realtime_agent()")

    def accepts_connection(self, kind: str) -> bool:
        return kind == MEDIA_STREAM

    async def on_connect(self, conn: Connection) -> dict[str, Any]:
        call_sid = str(conn.info.get("callSid") or "")
        if not call_sid:
            raise SchemaMismatch("a media-stream connection needs the call's callSid")
        self.state.calls[call_sid] = Call.model_validate({"started_at": _now(), "from": str(conn.info.get("from") or "")})
        for old in list(self.state.calls)[:-MAX_CALLS]:
            del self.state.calls[old]
        conn.state = {"call_sid": call_sid}
        await self.emit("call_started", {"call_sid": call_sid, "from": self.state.calls[call_sid].caller})
        return await self.session_spec()

    async def on_message(self, conn: Connection, data: str | bytes) -> Any:
        call_sid = str((conn.state or {}).get("call_sid", "")) if isinstance(conn.state, dict) else ""
        call = self.state.calls.get(call_sid)
        if call is None:
            raise ConnectionGone(f"no call is recorded for connection {conn.id}")
        try:
            event = CALL_EVENTS.validate_json(data)
        except ValueError as exc:
            raise SchemaMismatch(f"call event: {exc}") from exc
        if isinstance(event, Transcript):
            if event.text.strip():
                call.transcript = [*call.transcript[-(MAX_TRANSCRIPT - 1) :], TranscriptEntry(role=event.role, text=event.text)]
                await self.emit("transcript", {"call_sid": call_sid, "role": event.role, "text": event.text})
            return None
        if event.type == "approval":
            approval = CallApproval(
                id=new_approval_id(),
                call_sid=call_sid,
                connection=conn.id,
                call_id=event.call_id,
                tool=event.name,
                arguments=event.arguments,
                agent=self.type,
                requested_at=_now(),
            )
            self.state.approvals.append(approval)
            await self.emit("approval_requested", approval.model_dump(mode="json"))
            return {"id": approval.id}
        return {"output": await self.run_tool(event.name, event.arguments, event.call_id)}

    async def on_close(self, conn: Connection) -> None:
        call_sid = str(conn.state.get("call_sid", "")) if isinstance(conn.state, dict) else ""
        call = self.state.calls.get(call_sid)
        if call is not None and call.ended_at is None:
            call.ended_at = _now()
        self.state.approvals = [a for a in self.state.approvals if a.connection != conn.id]
        await self.emit("call_ended", {"call_sid": call_sid, "code": conn.close_code})

    async def on_request(self, request: VoiceRequest) -> Any:
        if isinstance(request, ListApprovals):
            return {"pending": self.state.approvals, "decisions": self.state.decisions}
        if isinstance(request, ListCalls):
            return {"calls": self.state.calls}
        return await self._decide(request)

    async def _decide(self, request: Decide) -> dict[str, Any]:
        approval = next((a for a in self.state.approvals if a.id == request.id), None)
        if approval is None:
            done = next((d for d in self.state.decisions if d.id == request.id), None)
            if done is not None:
                raise ApprovalDecided(f"approval {request.id} was {done.decision}d by {done.by} at {done.decided_at}")
            raise ApprovalNotFound(f"no pending approval {request.id} (the call may have ended)")
        conn = await self.connection(approval.connection)
        if conn is None:
            self.state.approvals.remove(approval)
            raise ApprovalNotFound(f"the call of approval {request.id} has ended")
        op = {"op": request.op, "call_id": approval.call_id, "reason": request.reason}
        await conn.send(orjson.dumps(op).decode())
        decision = CallDecision(
            **approval.model_dump(), decision=request.op, by=request.by, reason=request.reason, decided_at=_now()
        )
        self.state.approvals.remove(approval)
        self.state.decisions = [*self.state.decisions[-(MAX_DECISIONS - 1) :], decision]
        await self.emit("approval_decided", decision.model_dump(mode="json"))
        return {"decision": decision}

    async def session_spec(self) -> dict[str, Any]:
        """What the bridge builds the call's realtime session from (the `connect` reply)."""
        await import_sdk()
        from agents import FunctionTool
        from agents.run_context import RunContextWrapper

        agent = self.realtime_agent()
        instructions = await agent.get_system_prompt(RunContextWrapper(context=None))
        tools = []
        for tool in agent.tools:
            if isinstance(tool, FunctionTool):
                tools.append(
                    {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.params_json_schema,
                        "needs_approval": tool.needs_approval is not False,
                    }
                )
        return {
            "agent": agent.name,
            "instructions": instructions or "",
            "voice": self.voice,
            "greeting": self.greeting,
            "tools": tools,
        }

    async def run_tool(self, name: str, arguments: str, call_id: str) -> str:
        """Run one of the realtime agent's function tools here, in this turn; its output as text."""
        await import_sdk()
        from agents.tool_context import ToolContext

        tool = _function_tool(self.realtime_agent(), name)
        context = ToolContext(context=None, tool_name=name, tool_call_id=call_id, tool_arguments=arguments)
        token = current_client.set(self.mesh)
        started = time.monotonic()
        try:
            output = await tool.on_invoke_tool(context, arguments)
        finally:
            current_client.reset(token)
        self.log.info("call.tool_ran", tool=name, seconds=round(time.monotonic() - started, 3))
        return output if isinstance(output, str) else orjson.dumps(output, default=str).decode()


async def import_sdk() -> None:
    """Import the realtime SDK in a thread the first time: it takes seconds, during which the
    worker's event loop must keep renewing its lease and serving other instances."""
    if "agents.realtime" not in sys.modules:
        await asyncio.to_thread(importlib.import_module, "agents.realtime")


def _function_tool(agent: RealtimeAgent[Any], name: str) -> FunctionTool:
    from agents import FunctionTool

    for tool in agent.tools:
        if isinstance(tool, FunctionTool) and tool.name == name:
            return tool
    raise RequestError(f"the realtime agent has no function tool {name[:80]!r}")
