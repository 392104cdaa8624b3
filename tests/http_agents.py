"""Agents and bus-level doubles the HTTP bridge tests run against (real NATS, real runtimes)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel, ConfigDict, Field

from mesh import Agent
from mesh.errors import ApprovalNotFound


class SlowState(BaseModel):
    runs: int = 0


class Slow(Agent[SlowState]):
    """Sleeps `{"sleep": seconds}` and counts its runs."""

    type = "slow"

    async def on_request(self, request: dict[str, float]) -> dict[str, int]:
        await asyncio.sleep(request.get("sleep", 0))
        self.state.runs += 1
        return {"runs": self.state.runs}


class Broken(Agent[None]):
    """Always raises: the bridge must turn it into a problem, not a traceback."""

    type = "broken"

    async def on_request(self, request: Any) -> Any:
        raise RuntimeError("boom")


class NoteState(BaseModel):
    notes: list[str] = []


class Notes(Agent[NoteState]):
    """Appends a note and emits a `noted` event (run progress for live views)."""

    type = "notes"

    async def on_request(self, request: str) -> dict[str, int]:
        self.state.notes.append(request)
        await self.emit("noted", {"note": request, "count": len(self.state.notes)})
        return {"count": len(self.state.notes)}


def _schema_agents() -> list[type[Agent[Any]]]:
    from services.demo import Counter, Echo
    from services.triage import Clerk, Triage

    return [Counter, Echo, Notes, Triage, Clerk]


SCHEMA_AGENTS = _schema_agents()
"""What the schemathesis run serves (through `mesh up --app http_agents:SCHEMA_AGENTS`): plain agents,
a method (counter's reset), and LLM agents (offline model) for the approvals routes and the LLM doors
(OpenAI-compatible API, A2A). Not the demo Relay: it relays whatever its target answers, so
`{"to": "nosuch/x"}` is a correct 503."""


async def serve_garbled(nc: Client) -> Any:
    """A responder on `agents.garbled.*` whose replies are not JSON (for the 502 test)."""

    async def on_msg(msg: Msg) -> None:
        await nc.publish(msg.reply, b"\xff this is not json")

    return await nc.subscribe("agents.garbled.*", cb=on_msg)


class ListApprovals(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["approvals"]


class Decide(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["approve", "reject"]
    id: str
    by: str = "unknown"
    reason: str | None = None


class MailerState(BaseModel):
    pending: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    sent: list[str] = []


class Mailer(Agent[MailerState]):
    """Speaks the LLM agents' approval protocol (issue 3) without a model: a message asks to send
    an e-mail, which waits for a person's decision; `{"op": "approvals"|"approve"|"reject"}`."""

    type = "mailer"

    async def on_request(self, request: str | Annotated[ListApprovals | Decide, Field(discriminator="op")]) -> dict[str, Any]:
        if isinstance(request, str):
            approval = {
                "id": f"ap{len(self.state.pending) + len(self.state.decisions) + 1}",
                "run_id": "r1",
                "tool": "send_email",
                "arguments": orjson.dumps({"to": request}).decode(),
                "requested_at": time.time(),
                "expires_at": time.time() + 3600,
            }
            self.state.pending.append(approval)
            await self.emit("approval_requested", approval)
            return {"status": "awaiting_approval", "approvals": [approval]}
        if isinstance(request, ListApprovals):
            return {"pending": self.state.pending, "decisions": self.state.decisions}
        found = next((a for a in self.state.pending if a["id"] == request.id), None)
        if found is None:
            raise ApprovalNotFound(f"no pending approval {request.id!r}")
        self.state.pending.remove(found)
        decision = {**found, "decision": request.op, "by": request.by, "reason": request.reason}
        self.state.decisions.append(decision)
        if request.op == "approve":
            self.state.sent.append(orjson.loads(found["arguments"])["to"])
        await self.emit("approval_decided", decision)
        return {"status": "completed", "decision": decision}
