"""Agents and bus-level doubles the HTTP bridge tests run against (real NATS, real runtimes)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel

from mesh import Agent


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

    return [Counter, Echo, Notes]


SCHEMA_AGENTS = _schema_agents()
"""What the schemathesis run serves (through `mesh up --app http_agents:SCHEMA_AGENTS`). Not the
demo Relay: it relays whatever its target answers, so `{"to": "nosuch/x"}` is a correct 503."""


async def serve_garbled(nc: Client) -> Any:
    """A responder on `agents.garbled.*` whose replies are not JSON (for the 502 test)."""

    async def on_msg(msg: Msg) -> None:
        await nc.publish(msg.reply, b"\xff this is not json")

    return await nc.subscribe("agents.garbled.*", cb=on_msg)


class ApprovalsDouble:
    """Serves the approvals request convention (subjects.md) for one instance, as issue 3's agents will."""

    def __init__(self, nc: Client, key: str) -> None:
        self.nc = nc
        self.key = key
        self.ids = itertools.count(1)
        self.pending: dict[str, dict[str, Any]] = {}
        self.decisions: list[dict[str, Any]] = []
        self._subs: list[Any] = []

    def add(self, tool: str, arguments: dict[str, Any]) -> str:
        approval_id = f"ap{next(self.ids)}"
        self.pending[approval_id] = {
            "id": approval_id, "tool": tool, "arguments": arguments,
            "requested_at": time.time(), "expires_at": time.time() + 3600,
        }
        return approval_id

    async def start(self) -> ApprovalsDouble:
        self._subs.append(await self.nc.subscribe(f"approvals.{self.key}.list", cb=self._list))
        self._subs.append(await self.nc.subscribe(f"approvals.{self.key}.decide", cb=self._decide))
        await self.nc.flush()
        return self

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    async def _list(self, msg: Msg) -> None:
        await self.nc.publish(msg.reply, orjson.dumps({"approvals": list(self.pending.values())}))

    async def _decide(self, msg: Msg) -> None:
        decision = orjson.loads(msg.data)
        found = self.pending.pop(decision["id"], None)
        if found is None:
            body = {"error": {"code": "not_found", "status": 404, "message": f"no pending approval {decision['id']}"}}
            headers = {"Nats-Service-Error-Code": "404", "Nats-Service-Error": "not found", "Mesh-Error-Code": "not_found"}
            await self.nc.publish(msg.reply, orjson.dumps(body), headers=headers)
            return
        self.decisions.append(decision)
        await self.nc.publish(msg.reply, orjson.dumps({**found, "decision": decision["decision"], "by": decision["by"]}))
