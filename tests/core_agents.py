"""Agents the tests run, in-process and in `mesh worker --app tests.agents` processes."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel

from mesh import Agent, current_turn
from mesh.tracing import trace_id
from services.demo import Counter, Echo


class HopState(BaseModel):
    hops: int = 0


class Hop(Agent[HopState]):
    """`{"path": ["hop/b", "hop/a"]}` calls the first address with the rest of the path."""

    type = "hop"

    async def on_request(self, request: dict[str, Any]) -> dict[str, Any]:
        self.state.hops += 1
        path = list(request.get("path", []))
        turn = current_turn.get()
        assert turn is not None
        here = {"at": f"{self.type}/{self.name}", "trace": trace_id(turn.traceparent)}
        if request.get("emit"):
            await self.emit("visited", here)
        if not path:
            return {"trail": [here], "remaining": turn.remaining()}
        agent_type, _, name = path[0].partition("/")
        reply = await self.call(agent_type, name, {"path": path[1:]}, timeout=request.get("timeout"))
        return {"trail": [here, *reply["trail"]], "remaining": reply["remaining"]}


class FaultyState(BaseModel):
    value: int = 0
    blob: str = ""
    activations: int = 0
    changes: int = 0


class Action(BaseModel):
    action: Literal["ok", "raise", "big", "invalid", "read"]


class Faulty(Agent[FaultyState]):
    """Misbehaves on request, to show each failure gets its error and nothing partial is saved."""

    type = "faulty"

    async def on_activate(self) -> None:
        self.state.activations += 1

    async def on_state_changed(self, previous: FaultyState) -> None:
        self.state.changes += 1

    async def on_request(self, request: Action) -> dict[str, int]:
        if request.action == "ok":
            self.state.value += 1
        elif request.action == "raise":
            self.state.value += 100
            raise RuntimeError("boom")
        elif request.action == "big":
            self.state.blob = "x" * 600_000
        elif request.action == "invalid":
            self.state.value = "not a number"  # type: ignore[assignment]
        return {"value": self.state.value, "activations": self.state.activations, "changes": self.state.changes}


class Sleeper(Agent[None]):
    """Stateless and slow: its turns overlap."""

    type = "sleeper"

    async def on_request(self, request: float) -> float:
        await asyncio.sleep(request)
        return request


AGENTS = [Counter, Echo, Hop, Faulty, Sleeper]
