"""Hooks for what watches the runtime (metrics, flight recorder): plain records, no I/O on the turn path.

Observers are called synchronously on the worker's event loop right after a turn ends or a state
write is acknowledged; one that needs I/O (publishing events, exporting spans) must buffer and do
it in a task of its own.

The records are read-only by convention, not frozen: a frozen dataclass sets each field through
`object.__setattr__`, about 5x the cost of a plain one (a few microseconds on every turn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class TurnRecord:
    agent_type: str
    name: str
    worker: str
    turn_id: str
    traceparent: str
    started_at: float  # wall clock, seconds since the epoch
    ended_at: float
    outcome: str  # "ok" or the error code
    error: str | None = None
    caller: str | None = None  # instance key of the turn that called this one, if any
    key: str = ""  # this instance's key (`type.token`), so observers need not encode the name again


@dataclass(slots=True)
class StateRecord:
    agent_type: str
    name: str
    worker: str
    revision: int
    size: int
    key: str = ""


class Observer(Protocol):
    def on_turn(self, record: TurnRecord) -> None: ...

    def on_state_saved(self, record: StateRecord) -> None: ...
