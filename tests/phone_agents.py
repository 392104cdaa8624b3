"""Agents the phone tests serve (also from `mesh worker --app phone_agents` processes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from mesh import Agent
from mesh.tools import agent_tool
from mesh.voice import VoiceAgent
from services.demo_live import Receptionist, Room
from services.triage import Triage

if TYPE_CHECKING:
    from agents.realtime import RealtimeAgent


class LedgerState(BaseModel):
    notes: list[str] = Field(default_factory=list)


class Note(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str


class Ledger(Agent[LedgerState]):
    """Keeps the notes it is given (what the concierge's approval-gated tool writes)."""

    type = "ledger"

    async def on_request(self, request: Note) -> dict[str, int]:
        self.state.notes.append(request.note)
        return {"notes": len(self.state.notes)}


class Concierge(VoiceAgent):
    """A voice agent whose one tool needs a person's approval before it runs."""

    type = "concierge"
    greeting = False

    def realtime_agent(self) -> RealtimeAgent[Any]:
        from agents.realtime import RealtimeAgent

        return RealtimeAgent(
            name="Concierge",
            instructions="Write down what the caller asks for with write_note.",
            tools=[
                agent_tool(
                    "ledger",
                    name="write_note",
                    instance="book",
                    request_model=Note,
                    needs_approval=True,
                    description="Write a note in the ledger (a person approves it first).",
                )
            ],
        )


AGENTS = [Receptionist, Triage, Concierge, Ledger, Room]
