"""Demo agents reached live: a chat `room` (WebSocket connections) and a phone `receptionist`.

    websocat ws://127.0.0.1:8080/agents/room/lobby/connect?name=ann     -> the last 50 messages, then live
    POST /agents/room/lobby {"from": "bot", "text": "hello"}             -> said to everyone in the room
    POST /agents/receptionist/desk/call (Twilio's voice webhook)         -> TwiML streaming the call here

`mesh up` serves them (`services.demo` lists them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from mesh import Agent
from mesh.connections import Connection
from mesh.tools import agent_tool
from mesh.voice import VoiceAgent

if TYPE_CHECKING:
    from agents.realtime import RealtimeAgent

HISTORY = 50


class RoomLine(BaseModel):
    sender: str
    text: str


class RoomState(BaseModel):
    lines: list[RoomLine] = Field(default_factory=list, description="The last 50 messages, oldest first.")


class Say(BaseModel):
    """Say something in the room without a connection (as a bot, or from a script)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    sender: str = Field(alias="from", min_length=1, max_length=64)
    text: str = Field(min_length=1, max_length=4000)


class Room(Agent[RoomState]):
    """A chat room: every text frame a connection sends is said to every connection of the room, on
    every bridge; a new connection first gets the last 50 messages. `?name=` names the speaker."""

    type = "room"

    async def on_connect(self, conn: Connection) -> None:
        for line in self.state.lines[-HISTORY:]:
            await conn.send(_frame(line))

    async def on_message(self, conn: Connection, data: str | bytes) -> None:
        if isinstance(data, bytes):
            return  # a text room: binary frames are ignored
        sender = conn.query.get("name", "")[:64] or f"guest-{conn.id[:4]}"
        await self._say(RoomLine(sender=sender, text=data[:4000]))

    async def on_request(self, request: Say) -> dict[str, Any]:
        sent = await self._say(RoomLine(sender=request.sender, text=request.text))
        return {"delivered": sent}

    async def _say(self, line: RoomLine) -> int:
        self.state.lines = [*self.state.lines[-(HISTORY - 1) :], line]
        return await self.broadcast(_frame(line))


def _frame(line: RoomLine) -> str:
    return orjson.dumps({"from": line.sender, "text": line.text}).decode()


class AskTutors(BaseModel):
    """A question for the triage tutors (a user message of the `triage` LLM agent)."""

    model_config = ConfigDict(extra="forbid")
    op: Literal["message"] = "message"
    input: str = Field(description="The caller's question, in their words.")


class Receptionist(VoiceAgent):
    """Answers the phone: greets the caller and hands questions to the triage tutors. Offline (no
    OPENAI_API_KEY) it talks through the local stub model, which says so in every sentence."""

    type = "receptionist"

    def realtime_agent(self) -> RealtimeAgent[Any]:
        from agents.realtime import RealtimeAgent

        return RealtimeAgent(
            name="Receptionist",
            instructions=(
                "You answer the phone for agent-mesh. Greet the caller briefly. When they ask a question, "
                "call ask_tutors with it and read the tutors' answer back. Keep every answer short: this is a phone call."
            ),
            tools=[
                agent_tool(
                    "triage",
                    name="ask_tutors",
                    instance=f"phone-{self.name}",
                    request_model=AskTutors,
                    description="Ask the history and math tutors a question; returns their answer.",
                )
            ],
        )


LIVE_AGENTS: list[type[Agent[Any]]] = [Room, Receptionist]
