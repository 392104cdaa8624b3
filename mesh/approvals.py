"""Durable human approvals: what an LLM instance remembers about runs paused for a person.

A run that calls a tool marked `needs_approval` stops. The LLM agent then keeps, in its own
(small) state, one `PendingApproval` per paused tool call, and stores the serialized SDK
`RunState` (which holds the whole conversation of the run and can be large) in the object store
bucket `mesh_runs` under `<type>.<token>.<run_id>`. When every approval of a run is decided, any
worker that owns the instance loads the snapshot and resumes the run. Decisions are kept with who
decided and when; an approval left undecided past `expires_at` is rejected by `expiry`.

The snapshot is only ever written and read by workers (`RunState.from_string` trusts its input),
never taken from a client.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from mesh import subjects
from mesh._nats import JetStream, Objects, open_objects

MAX_DECISIONS = 100
MAX_RUNS = 10


def now() -> datetime:
    return datetime.now(UTC)


def new_approval_id() -> str:
    return "ap_" + os.urandom(5).hex()


def new_run_id() -> str:
    return "run_" + os.urandom(6).hex()


class PendingApproval(BaseModel):
    """A tool call waiting for a person's decision."""

    id: str = Field(description="Approval id, used by `mesh approve|reject`.")
    run_id: str
    tool: str
    arguments: str = Field(description="The tool's arguments as the model wrote them (JSON text).")
    call_id: str = Field(description="The SDK tool call id this approval answers.")
    agent: str = Field(description="The SDK agent that called the tool.")
    requested_at: datetime
    expires_at: datetime
    decision: Literal["approve", "reject"] | None = Field(
        default=None, description="Set once decided, while other approvals of the same run are still open."
    )
    reason: str | None = None
    decided_by: str | None = None


class Decision(BaseModel):
    """A recorded decision: who approved or rejected which tool call, and when."""

    id: str
    run_id: str
    tool: str
    arguments: str
    decision: Literal["approve", "reject"]
    by: str
    reason: str | None = None
    decided_at: datetime


class RunRecord(BaseModel):
    """The outcome of one run, kept so a caller who was not connected can read it later."""

    run_id: str
    status: Literal["running", "completed", "awaiting_approval", "failed"]
    agent: str
    output: str | None = None
    started_at: datetime
    finished_at: datetime | None = None


class LLMState(BaseModel):
    """The instance state of an LLM agent (small: conversation and run snapshots live elsewhere)."""

    pending: list[PendingApproval] = Field(default_factory=list)
    decisions: list[Decision] = Field(default_factory=list, description=f"The last {MAX_DECISIONS}.")
    runs: list[RunRecord] = Field(default_factory=list, description=f"The last {MAX_RUNS}.")
    requests: int = Field(default=0, description="Model requests made by this instance so far.")
    input_tokens: int = 0
    output_tokens: int = 0

    def record_decision(self, decision: Decision) -> None:
        self.decisions = [*self.decisions, decision][-MAX_DECISIONS:]

    def record_run(self, record: RunRecord) -> None:
        runs = [r for r in self.runs if r.run_id != record.run_id]
        self.runs = [*runs, record][-MAX_RUNS:]

    def find_decision(self, approval_id: str) -> Decision | None:
        return next((d for d in reversed(self.decisions) if d.id == approval_id), None)

    def expired(self, at: datetime) -> list[PendingApproval]:
        return [p for p in self.pending if p.decision is None and p.expires_at <= at]

    def next_expiry(self) -> datetime | None:
        open_ = [p.expires_at for p in self.pending if p.decision is None]
        return min(open_) if open_ else None


def expiry_after(seconds: float, at: datetime | None = None) -> datetime:
    return (at or now()) + timedelta(seconds=seconds)


class RunStore:
    """Serialized `RunState` snapshots in the object store bucket `mesh_runs`."""

    def __init__(self, store: Objects) -> None:
        self._store = store

    @classmethod
    async def open(cls, js: JetStream) -> RunStore:
        return cls(await open_objects(js, subjects.RUNS_BUCKET, description="paused LLM runs (RunState)"))

    @staticmethod
    def key(instance_key: str, run_id: str) -> str:
        return f"{instance_key}.{run_id}"

    async def save(self, instance_key: str, run_id: str, blob: str) -> None:
        """Store the snapshot; `Unavailable` if the object store did not confirm it."""
        await self._store.put(self.key(instance_key, run_id), blob.encode())

    async def load(self, instance_key: str, run_id: str) -> str | None:
        data = await self._store.get(self.key(instance_key, run_id))
        return None if data is None else data.decode()

    async def delete(self, instance_key: str, run_id: str) -> None:
        await self._store.delete(self.key(instance_key, run_id))
