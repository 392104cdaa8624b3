"""A run's progress events from the SDK's lifecycle hooks, for runs that are not streamed.

`LLMAgent` streams a run so that its progress (text deltas included) is published while the model
writes. A model that writes each answer whole (the offline demo model) has no pieces to show early:
streaming it costs the SDK's streaming machinery (a task, an event queue, incremental session
writes) for nothing, about an eighth of a short run's CPU. Such runs go through `Runner.run`, and
these hooks publish the same events, in the same order, with the same bodies:

- `agent_switched` when an agent starts (the first one, and after each handoff);
- `tool_called` for each tool call in a model response (before it runs, or waits for approval),
  `tool_output` when a tool has run;
- `handoff` when one agent hands over to another;
- `text_delta` with each message's text (whole), then `message_output`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agents import Agent, Handoff, RunContextWrapper, RunHooks, Tool
from agents.items import ModelResponse
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]

MAX_TOOL_OUTPUT = 4096


class ProgressHooks(RunHooks[Any]):
    """Publishes the progress events of run `run_id` through `emit(kind, data)`."""

    def __init__(self, run_id: str, emit: Emit) -> None:
        self.run_id = run_id
        self.emit = emit

    async def on_agent_start(self, context: Any, agent: Any) -> None:
        await self.emit("agent_switched", {"run_id": self.run_id, "agent": agent.name})

    async def on_llm_end(self, context: RunContextWrapper[Any], agent: Agent[Any], response: ModelResponse) -> None:
        handoffs = _handoff_names(agent)
        for item in response.output:
            if isinstance(item, ResponseFunctionToolCall) and item.name not in handoffs:
                await self.emit(
                    "tool_called", {"run_id": self.run_id, "agent": agent.name, "tool": item.name, "arguments": item.arguments}
                )
            elif isinstance(item, ResponseOutputMessage):
                for part in item.content:
                    if isinstance(part, ResponseOutputText):
                        await self.emit("text_delta", {"run_id": self.run_id, "delta": part.text})
                await self.emit("message_output", {"run_id": self.run_id, "agent": agent.name})

    async def on_tool_end(self, context: RunContextWrapper[Any], agent: Any, tool: Tool, result: object) -> None:
        await self.emit("tool_output", {"run_id": self.run_id, "agent": agent.name, "output": str(result)[:MAX_TOOL_OUTPUT]})

    async def on_handoff(self, context: RunContextWrapper[Any], from_agent: Any, to_agent: Any) -> None:
        await self.emit("handoff", {"run_id": self.run_id, "from": from_agent.name, "to": to_agent.name})


def _handoff_names(agent: Agent[Any]) -> set[str]:
    return {h.tool_name if isinstance(h, Handoff) else Handoff.default_tool_name(h) for h in agent.handoffs}


def writes_whole_answers(agent: Agent[Any]) -> bool:
    """Whether every model `agent` and the agents it hands off to use writes its answers whole
    (`whole_answers` on the model, as the offline demo model has): then streaming shows nothing early.
    A model given by name, the default model or a handoff whose agent is not known here counts as
    streaming."""
    seen: set[int] = set()
    todo: list[Agent[Any]] = [agent]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if getattr(current.model, "whole_answers", False) is not True:
            return False
        for target in current.handoffs:
            if not isinstance(target, Agent):
                return False
            todo.append(target)
    return True
