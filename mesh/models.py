"""Which language model an LLM agent talks to: OpenAI, any OpenAI-compatible server, or offline.

`select_model` turns plain values (read from the environment by `services/`) into an SDK model:

- `base_url` set: any OpenAI-compatible server (vLLM, Ollama, llama.cpp server) through Chat
  Completions, which is what those servers implement;
- else `api_key` set: OpenAI itself (Responses API);
- else the deterministic **offline demo model**: rules written per agent, no network, labelled
  in every reply and log line, so a new user sees routing, handoffs and approvals work at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from agents import Handoff, Model, ModelSettings, ModelTracing, OpenAIChatCompletionsModel, OpenAIResponsesModel, Tool
from agents.agent_output import AgentOutputSchemaBase
from agents.items import ModelResponse, TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from agents.testing import assistant_message, function_call
from agents.usage import Usage
from openai import AsyncOpenAI
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
    ResponseUsage,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from mesh.llm import OFFLINE_LABEL

OFFLINE_PREFIX = "[offline demo model] "
"""Every text the offline model writes starts with this, so nobody mistakes it for an LLM."""
DEFAULT_OPENAI_MODEL = "gpt-4.1-mini"

Policy = Callable[["OfflineView"], Sequence[TResponseOutputItem]]
"""An offline agent's rules: what it answers to the conversation it sees."""


@dataclass(frozen=True)
class OfflineView:
    """What an offline policy may look at: the conversation and the tools on offer."""

    instructions: str
    items: list[dict[str, Any]]
    tools: list[str]
    handoffs: list[str]
    turn: int

    @property
    def last_user_text(self) -> str:
        """The text of the latest user message ('' when there is none)."""
        for item in reversed(self.items):
            if item.get("role") == "user":
                return _text_of(item.get("content"))
        return ""

    @property
    def tool_outputs(self) -> list[str]:
        """Outputs of the tools called since the latest user message, oldest first."""
        found: list[str] = []
        for item in reversed(self.items):
            if item.get("role") == "user":
                break
            if item.get("type") == "function_call_output":
                found.append(_text_of(item.get("output")))
        return found[::-1]

    def say(self, text: str) -> list[TResponseOutputItem]:
        return [assistant_message(OFFLINE_PREFIX + text)]

    def call(self, tool: str, arguments: dict[str, Any]) -> list[TResponseOutputItem]:
        return [function_call(tool, arguments, call_id=f"offline_{tool}_{self.turn}_{len(self.items)}")]


class OfflineModel(Model):
    """A deterministic model that follows a policy function instead of calling an LLM.

    It answers both ways the SDK asks: `get_response` (`Runner.run`) returns the policy's items,
    `stream_response` (`Runner.run_streamed`) streams each message's text as one delta, then the
    completed response. Each call costs the policy and a few objects, so that what a benchmark on
    this model measures is the SDK and the mesh around it, not a model simulator.
    """

    label = OFFLINE_LABEL
    whole_answers: ClassVar[bool] = True
    """Each answer is written whole: `LLMAgent` publishes its progress without streaming the run."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def _respond(
        self, system_instructions: str | None, input: str | list[TResponseInputItem], tools: list[Tool], handoffs: list[Handoff]
    ) -> list[TResponseOutputItem]:
        items = _as_items(input)
        view = OfflineView(
            instructions=system_instructions or "",
            items=items,
            tools=[getattr(t, "name", "") for t in tools],
            handoffs=[h.tool_name for h in handoffs],
            turn=sum(1 for i in items if i.get("role") == "user"),
        )
        return list(self.policy(view))

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        output = self._respond(system_instructions, input, tools, handoffs)
        return ModelResponse(output=output, usage=Usage(requests=1), response_id=None)

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        output = self._respond(system_instructions, input, tools, handoffs)
        sequence = 0
        for index, item in enumerate(output):
            if isinstance(item, ResponseOutputMessage):
                for part, content in enumerate(item.content):
                    if isinstance(content, ResponseOutputText):
                        yield ResponseTextDeltaEvent(
                            type="response.output_text.delta",
                            item_id=item.id,
                            output_index=index,
                            content_index=part,
                            delta=content.text,
                            logprobs=[],
                            sequence_number=sequence,
                        )
                        sequence += 1
        response = Response(
            id="offline-response",
            created_at=0,
            model=OFFLINE_LABEL,
            object="response",
            output=output,
            tool_choice="none",
            tools=[],
            top_p=None,
            parallel_tool_calls=False,
            status="completed",
            usage=_NO_TOKENS,
        )
        yield ResponseCompletedEvent(type="response.completed", response=response, sequence_number=sequence)


_NO_TOKENS = ResponseUsage(
    input_tokens=0,
    output_tokens=0,
    total_tokens=0,
    input_tokens_details=InputTokensDetails(cache_write_tokens=0, cached_tokens=0),
    output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
)
"""One model request and no tokens: what the SDK counts for each offline answer."""


def select_model(*, policy: Policy, api_key: str | None = None, base_url: str | None = None, model: str | None = None) -> Model:
    """The model an agent uses, from plain configuration values (see the module docstring)."""
    if base_url:
        client = AsyncOpenAI(base_url=base_url, api_key=api_key or "not-needed")
        return OpenAIChatCompletionsModel(model=model or DEFAULT_OPENAI_MODEL, openai_client=client)
    if api_key:
        return OpenAIResponsesModel(model=model or DEFAULT_OPENAI_MODEL, openai_client=AsyncOpenAI(api_key=api_key))
    return OfflineModel(policy)


def model_label(model: Model | str | None) -> str:
    """A short name for replies and logs: the model name, or `offline-demo`."""
    if isinstance(model, OfflineModel):
        return OFFLINE_LABEL
    if isinstance(model, str):
        return model
    if model is None:
        return "default"
    name = getattr(model, "model", None)
    return str(name) if name else type(model).__name__


def _as_items(value: str | list[TResponseInputItem]) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    out: list[dict[str, Any]] = []
    for item in value:
        out.append(dict(item) if isinstance(item, dict) else dict(item.model_dump()))
    return out


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)
