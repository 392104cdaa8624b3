"""The context of the turn that is running now, so calls made inside it carry its trace and deadline."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field

import structlog


@dataclass(slots=True)
class TurnContext:
    """What a turn passes on to every call it makes: trace, call chain and deadline."""

    agent_type: str
    name: str
    key: str
    turn_id: str
    traceparent: str
    chain: tuple[str, ...]
    deadline: float | None
    base_log: structlog.typing.FilteringBoundLogger = field(repr=False)
    deadline_ms: str | None = None  # the caller's `Mesh-Deadline`, passed on unchanged by nested calls
    _log: structlog.typing.FilteringBoundLogger | None = field(default=None, repr=False)

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """A logger bound to this turn's agent, name, turn id and trace id (bound on first use)."""
        if self._log is None:
            self._log = self.base_log.bind(
                agent_type=self.agent_type,
                agent_name=self.name,
                turn_id=self.turn_id,
                trace_id=self.traceparent[3:35],
            )
        return self._log

    def remaining(self) -> float | None:
        """Seconds left before the caller stops waiting, or None when nobody waits."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()


current_turn: contextvars.ContextVar[TurnContext | None] = contextvars.ContextVar("mesh_current_turn", default=None)
