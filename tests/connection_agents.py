"""Agents the connection tests serve (also from `mesh worker --app connection_agents` processes)."""

from __future__ import annotations

import os
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from mesh import Agent
from mesh.connections import Connection
from services.demo_live import Room


class TrackerState(BaseModel):
    log: dict[str, list[str]] = Field(default_factory=dict, description="connection id -> its events, in turn order")
    closed: dict[str, int] = Field(default_factory=dict, description="connection id -> close code")


class Broadcast(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    tag: str | None = None
    exclude: list[str] = Field(default_factory=list)


class Tracker(Agent[TrackerState]):
    """Records every connection event in its state; answers each frame with `{"n", "connected"}`.

    `on_connect` sets the connection's own state, so an `on_message` that runs first (or that lost
    it) answers `"connected": false`. A frame `flood N` sends N frames of 16 KiB back; `fail` raises.
    """

    type = "tracker"

    async def on_connect(self, conn: Connection) -> None:
        conn.state = {"connected": True}
        if "team" in conn.query:
            conn.tags.add(conn.query["team"])
        self.state.log[conn.id] = ["connect"]

    async def on_message(self, conn: Connection, data: str | bytes) -> None:
        text = data if isinstance(data, str) else data.decode()
        if text == "fail":
            raise RuntimeError("asked to fail")
        if text.startswith("flood "):
            for _ in range(int(text.split()[1])):
                await conn.send(os.urandom(16384))  # incompressible: permessage-deflate is on
            return
        self.state.log.setdefault(conn.id, []).append(text)
        connected = isinstance(conn.state, dict) and conn.state.get("connected") is True
        await conn.send(orjson.dumps({"n": text, "connected": connected}).decode())

    async def on_close(self, conn: Connection) -> None:
        self.state.closed[conn.id] = conn.close_code or 0
        self.state.log.setdefault(conn.id, []).append("close")

    async def on_request(self, request: Broadcast) -> dict[str, Any]:
        sent = await self.broadcast(request.text, tag=request.tag, exclude=request.exclude)
        return {"sent": sent, "open": len(await self.connections())}


class Plain(Agent[None]):
    """Takes requests only: a connection to it is refused."""

    type = "plain"

    async def on_request(self, request: Any) -> Any:
        return request


AGENTS = [Tracker, Room, Plain]
