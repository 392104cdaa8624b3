"""The demo triage for dashboard and client.js tests, streaming its answers at a pace the test sets.

`PacedModel` follows the offline demo policies but streams each text answer word by word, and
writes each word only when the test lets it (`Pacer.release`), so a test sees the answer grow in
the page, can reload in the middle of it, and then lets the rest through (`Pacer.open`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import agents
from agents.items import TResponseOutputItem, TResponseStreamEvent
from agents.testing import ModelCall, ModelStep, ScriptedModel
from agents.testing.model import _stream_events_for_step
from agents.usage import Usage

from mesh.models import OfflineModel, OfflineView, Policy
from services.triage import Triage, history_policy, math_policy, triage_policy


class Pacer:
    """How many words a paced model may write now: `await release(n)`, or `await open()` for all."""

    def __init__(self) -> None:
        self._allowed = 0
        self._opened = False
        self._written = 0
        self._changed = asyncio.Condition()

    async def take(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._opened or self._allowed > 0)
            if not self._opened:
                self._allowed -= 1
            self._written += 1
            self._changed.notify_all()

    async def release(self, words: int = 1) -> None:
        async with self._changed:
            self._allowed += words
            self._changed.notify_all()

    async def open(self) -> None:
        async with self._changed:
            self._opened = True
            self._changed.notify_all()

    async def wait_written(self, words: int) -> None:
        """Until the model has written `words` words in all (the test's own deadline applies)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._written >= words)


PACER: Pacer | None = None
"""The pacer of the running test (None: answers stream at once, word by word)."""


class PacedModel(OfflineModel):
    """An offline policy whose text answers stream one word per `PACER.take()`."""

    whole_answers = False  # its runs are streamed, word by word

    def __init__(self, policy: Policy, pacer: Callable[[], Pacer | None] = lambda: PACER) -> None:
        super().__init__(policy)
        self._pacer = pacer

    def _script(self) -> ScriptedModel:
        return ScriptedModel([ModelStep.respond(self._respond_paced)], default_usage=Usage(requests=1))

    async def get_response(self, *args: Any, **kwargs: Any) -> Any:
        return await self._script().get_response(*args, **kwargs)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        return self._script().stream_response(*args, **kwargs)

    def _respond_paced(self, call: ModelCall) -> ModelStep:
        output: Sequence[TResponseOutputItem] = self._respond(call.system_instructions, call.input, call.tools, call.handoffs)

        async def events(call: ModelCall) -> AsyncIterator[TResponseStreamEvent]:
            for event in _stream_events_for_step(ModelStep(output=output), preserve_raw_usage=False):
                if event.type != "response.output_text.delta":
                    yield event
                    continue
                words = event.delta.split(" ")
                for index, word in enumerate(words):
                    pacer = self._pacer()
                    if pacer is not None:
                        await pacer.take()
                    yield event.model_copy(update={"delta": word if index == len(words) - 1 else word + " "})

        return ModelStep.stream(events, output=output, usage=Usage(requests=1))


POLICIES: dict[str, Callable[[OfflineView], Sequence[TResponseOutputItem]]] = {
    "History Tutor": history_policy,
    "Math Tutor": math_policy,
}


class PacedTriage(Triage):
    """The demo triage (type `triage`, same agents and rules) on paced models."""

    def build_agent(self) -> agents.Agent[Any]:
        entry = super().build_agent()
        tutors = [
            tutor.clone(model=PacedModel(POLICIES[tutor.name])) for tutor in entry.handoffs if isinstance(tutor, agents.Agent)
        ]
        return entry.clone(model=PacedModel(triage_policy), handoffs=tutors)


def use_pacer() -> Pacer:
    """A fresh pacer for this test (asyncio primitives belong to one event loop)."""
    global PACER
    PACER = Pacer()
    return PACER


def no_pacer() -> None:
    global PACER
    PACER = None
