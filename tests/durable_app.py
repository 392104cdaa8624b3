"""Agents the durable tests run in real `mesh worker` processes (`--app durable_app`)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pydantic import BaseModel

from mesh import Agent, method
from services.demo import Counter, Echo


class PickyState(BaseModel):
    ok: int = 0
    seen: list[int] = []


class Picky(Agent[PickyState]):
    """Fails every turn until the worker runs with PICKY_FIXED=1 (a deploy of the fixed code); each
    turn takes PICKY_DELAY seconds."""

    type = "picky"

    async def on_request(self, request: dict[str, Any]) -> dict[str, int]:
        if os.environ.get("PICKY_FIXED") != "1":
            raise RuntimeError("picky is broken")
        if delay := float(os.environ.get("PICKY_DELAY", "0")):  # a turn that takes a while
            await asyncio.sleep(delay)
        self.state.ok += 1
        self.state.seen.append(int(request.get("n", 0)))
        return {"ok": self.state.ok}


class TickerState(BaseModel):
    ticks: int = 0


class Ticker(Agent[TickerState]):
    """`{"every": "1s"}` registers schedule `beat`, which runs `tick` on this instance."""

    type = "ticker"

    async def on_request(self, request: dict[str, Any]) -> dict[str, int]:
        if "every" in request:
            await self.schedule("beat", {"by": 1}, every=request["every"], method="tick")
        if request.get("cancel"):
            await self.cancel_schedule("beat")
        return {"ticks": self.state.ticks}

    @method
    async def tick(self, payload: dict[str, int]) -> None:
        self.state.ticks += payload.get("by", 1)


class SlowState(BaseModel):
    done: int = 0


class Slow(Agent[SlowState]):
    """`{"sleep": s}` takes `s` seconds, then counts; a turn that sleeps first emits `started`, so a
    test can tell when it is under way."""

    type = "slow"

    async def on_request(self, request: dict[str, float]) -> dict[str, int]:
        if seconds := float(request.get("sleep", 0)):
            await self.emit("started")
            await asyncio.sleep(seconds)
        self.state.done += 1
        return {"done": self.state.done}


AGENTS = [Counter, Echo, Picky, Ticker, Slow]
