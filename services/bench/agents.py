"""The agents `mesh bench` runs in its worker processes (`--app services.bench.agents`).

They do the least work that still exercises the mesh path being measured, the same work as the
raw nats-py responder in `services.bench.raw`: echo, or bump a counter that is persisted every turn,
or wait on the local stub model first.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

from mesh.agent import Agent
from services.bench import stub_model

MODEL_URL_ENV = "MESH_BENCH_MODEL_URL"


class Bump(BaseModel):
    add: int = 1


class Count(BaseModel):
    n: int = 0


class BenchEcho(Agent[None]):
    """Stateless: replies with its request (the `invoke` scenario)."""

    type = "bench-echo"

    async def on_request(self, request: Any) -> Any:
        return request


class BenchTurn(Agent[Count]):
    """Every turn changes and persists the state (the `turn` and `hot` scenarios)."""

    type = "bench-turn"

    async def on_request(self, request: Bump) -> Count:
        self.state.n += request.add
        return self.state


class BenchActivation(BenchTurn):
    """Same work as `BenchTurn`; its own type so that only the activation worker serves it."""

    type = "bench-act"


class BenchSlow(Agent[Count]):
    """A turn that waits on a model call to the local stub model, then persists (`slow`)."""

    type = "bench-slow"

    async def on_request(self, request: Bump) -> Count:
        await stub_model.complete(os.environ[MODEL_URL_ENV], f"{self.name}: turn {self.state.n}")
        self.state.n += request.add
        return self.state


class Seq(BaseModel):
    seq: int


class Applied(BaseModel):
    n: int = 0
    last: int = 0
    out_of_order: int = 0


class BenchDurable(Agent[Applied]):
    """Applies durable messages numbered 1, 2, 3, ... per instance, counting any out of order (`durable`)."""

    type = "bench-durable"

    async def on_request(self, request: Seq) -> None:
        self.state.out_of_order += int(request.seq != self.state.last + 1)
        self.state.n += 1
        self.state.last = request.seq


AGENTS = [BenchEcho, BenchTurn, BenchSlow]
ACTIVATION_AGENTS = [BenchActivation]
DURABLE_AGENTS = [BenchDurable]
