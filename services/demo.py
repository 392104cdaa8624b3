"""The demo agents `mesh up` and `mesh worker` serve when no `--app` is given.

`triage` and `clerk` are LLM agents (services/triage.py); with no model configured they run on the
offline demo model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mesh import Agent, method
from services.demo_live import LIVE_AGENTS
from services.triage import Clerk, Triage


class CounterState(BaseModel):
    value: int = 0


class Add(BaseModel):
    model_config = ConfigDict(extra="forbid")
    add: int = Field(description="Amount to add (may be negative).")


class Total(BaseModel):
    value: int


class Counter(Agent[CounterState]):
    """A counter per name: `{"add": n}` -> `{"value": total}`; method `reset` sets it to 0."""

    type = "counter"

    async def on_request(self, request: Add) -> Total:
        self.state.value += request.add
        return Total(value=self.state.value)

    @method
    async def reset(self) -> Total:
        """Set the counter back to 0."""
        self.state.value = 0
        return Total(value=0)


class Echo(Agent[None]):
    """Stateless: replies with what it received (turns of one name may run concurrently)."""

    type = "echo"

    async def on_request(self, request: Any) -> Any:
        return request


class RelayState(BaseModel):
    relayed: int = 0


class RelayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(description="Address of the instance to call, TYPE/NAME.", pattern="^[a-z][a-z0-9_-]{0,63}/.+$")
    payload: Any = Field(default=None, description="Request body for that instance.")


class Relay(Agent[RelayState]):
    """Composition demo: `{"to": "TYPE/NAME", "payload": ...}` calls that instance and returns its reply."""

    type = "relay"

    async def on_request(self, request: RelayRequest) -> Any:
        agent_type, _, name = request.to.partition("/")
        reply = await self.call(agent_type, name, request.payload)
        self.state.relayed += 1
        return reply


AGENTS = [Counter, Echo, Relay, Triage, Clerk, *LIVE_AGENTS]
