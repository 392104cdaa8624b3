"""LLM demo agents: the triage demo (handoffs) and a clerk whose counter changes need approval.

    mesh call triage/alice '"What is the capital of France?"'    -> answered by the History Tutor
    mesh call triage/alice '"What is 12 * 7?"'                     -> the Math Tutor, with its MCP calculator
    mesh call clerk/desk '"add 5 to counter demo"'                 -> awaits approval
    mesh approvals clerk/desk ; mesh approve clerk/desk ap_...     -> the counter changes once

Which model they use is a value given to `configure()`: the `mesh` command reads it from the
environment (`OPENAI_API_KEY`, `OPENAI_BASE_URL`, `MESH_MODEL`, see `services.settings.LLMSettings`)
before it starts a worker. Until then, and with none of those set, every agent here runs on the
deterministic offline demo model, whose rules are below. Importing this module reads nothing.
"""

from __future__ import annotations

import ast
import functools
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from mesh.llm import LLMAgent
from mesh.tools import agent_tool

if TYPE_CHECKING:  # the SDK is imported when an instance first runs, not when a worker starts
    import agents
    from agents.items import TResponseOutputItem
    from agents.mcp import MCPServer, MCPServerStreamableHttpParams

    from mesh.models import OfflineView, Policy


@dataclass(frozen=True)
class ModelSettings:
    """The model of the demo agents, as plain values (nothing set: the offline demo model)."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    """Any OpenAI-compatible server (vLLM, Ollama, llama.cpp), used through Chat Completions."""
    model: str | None = None
    openai_tracing: bool = False
    """Also upload the SDK's traces to OpenAI."""
    approval_ttl: float = 3600.0
    memory_max_items: int = 1000
    calculator_url: str | None = None
    """The demo MCP calculator (`services.demo_mcp`) the Math Tutor calls; None: it computes itself."""


_settings = ModelSettings()


def configure(settings: ModelSettings) -> None:
    """Use `settings` from now on: for models built after this call, and for every instance's
    approval expiry and memory size. The `mesh` command calls it before a worker starts."""
    global _settings
    _settings = settings
    model_for.cache_clear()
    shared_triage_agents.cache_clear()
    for cls in (Triage, Clerk):
        cls.approval_ttl = settings.approval_ttl
        cls.memory_max_items = settings.memory_max_items


@functools.cache
def model_for(policy: Policy) -> agents.Model:
    """One model (and HTTP client) per policy and process, shared by every instance."""
    from mesh.models import select_model
    from mesh.sdk_tracing import configure_sdk_tracing

    configure_sdk_tracing(export_to_openai=_settings.openai_tracing)
    return select_model(policy=policy, api_key=_settings.api_key, base_url=_settings.base_url, model=_settings.model)


def words(text: str) -> set[str]:
    """Lower-case words of `text`, for the keyword rules of the offline policies."""
    return set(re.findall(r"[a-z0-9]+", text.lower()))


# -- triage -----------------------------------------------------------------------------------

MATH_WORDS = {
    "math",
    "calculate",
    "compute",
    "plus",
    "minus",
    "times",
    "divided",
    "sum",
    "product",
    "equation",
    "solve",
    "square",
    "root",
    "multiply",
    "add",
    "subtract",
    "algebra",
    "geometry",
}
HISTORY_WORDS = {
    "history",
    "capital",
    "war",
    "king",
    "queen",
    "empire",
    "century",
    "revolution",
    "president",
    "ancient",
    "founded",
    "emperor",
    "dynasty",
    "battle",
    "pharaoh",
    "medieval",
}
CAPITALS = {
    "france": "Paris",
    "germany": "Berlin",
    "italy": "Rome",
    "spain": "Madrid",
    "japan": "Tokyo",
    "egypt": "Cairo",
    "england": "London",
    "portugal": "Lisbon",
    "greece": "Athens",
}


def output_of(view: OfflineView, tool: str) -> str | None:
    """The output of the latest call of `tool` since the latest user message (a handoff's output is not one)."""
    calls: dict[str, str] = {}
    found: str | None = None
    for item in view.items:
        if item.get("role") == "user":
            calls, found = {}, None
        elif item.get("type") == "function_call":
            calls[str(item.get("call_id"))] = str(item.get("name"))
        elif item.get("type") == "function_call_output" and calls.get(str(item.get("call_id"))) == tool:
            output = item.get("output")
            found = (
                output
                if isinstance(output, str)
                else " ".join(str(p.get("text", "")) for p in output or [] if isinstance(p, dict))
            )
    return found


def is_math(text: str) -> bool:
    return bool(MATH_WORDS & words(text)) or re.search(r"\d\s*[-+*/x×^]\s*\d", text) is not None


def triage_policy(view: OfflineView) -> Sequence[TResponseOutputItem]:
    text = view.last_user_text
    if is_math(text) and "transfer_to_math_tutor" in view.handoffs:
        return view.call("transfer_to_math_tutor", {})
    if HISTORY_WORDS & words(text) and "transfer_to_history_tutor" in view.handoffs:
        return view.call("transfer_to_history_tutor", {})
    return view.say(
        "Triage Agent: I route history questions to the History Tutor and math questions to the Math Tutor. Ask me one of those."
    )


def history_policy(view: OfflineView) -> Sequence[TResponseOutputItem]:
    found = words(view.last_user_text)
    for country, capital in CAPITALS.items():
        if country in found and "capital" in found:
            return view.say(f"History Tutor: the capital of {country.title()} is {capital}.")
    return view.say(
        "History Tutor: I am the offline demo model and know only a few capitals. "
        "Set OPENAI_API_KEY (or OPENAI_BASE_URL) for real answers."
    )


_OPS: dict[type[ast.AST], Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
}


def evaluate(expression: str) -> float:
    """Arithmetic only (numbers, + - * / ** and parentheses); anything else raises ValueError."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            if isinstance(node.op, ast.Pow) and abs(walk(node.right)) > 64:
                raise ValueError("exponent too large")
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.operand))
        raise ValueError("not arithmetic")

    try:
        return walk(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ZeroDivisionError, OverflowError) as exc:
        raise ValueError(str(exc)) from exc


def math_policy(view: OfflineView) -> Sequence[TResponseOutputItem]:
    """Finds the arithmetic in the question; with the MCP calculator on offer it asks the calculator
    (and reports its answer), else it computes itself."""
    text = view.last_user_text.replace("×", "*").replace("^", "**")
    text = re.sub(r"(?<=\d)\s*x\s*(?=\d)", "*", text)
    for candidate in sorted(re.findall(r"[\d\s.+\-*/()]+", text), key=len, reverse=True):
        candidate = candidate.strip()
        if not re.search(r"\d", candidate):
            continue
        try:
            value = evaluate(candidate)
        except ValueError:
            continue
        if "calculate" in view.tools:
            answer = output_of(view, "calculate")
            if answer is not None:
                return view.say(f"Math Tutor: {candidate} = {answer} (by the calculator MCP server).")
            return view.call("calculate", {"expression": candidate})
        shown = int(value) if float(value).is_integer() else round(value, 6)
        return view.say(f"Math Tutor: {candidate} = {shown}.")
    return view.say("Math Tutor: I am the offline demo model and can only do arithmetic like 12 * 7.")


class Triage(LLMAgent):
    """The seed example: a Triage Agent that hands off to a History Tutor or a Math Tutor."""

    type = "triage"

    def build_mcp_servers(self) -> list[MCPServer]:
        """The Math Tutor's calculator (`services.demo_mcp`), when one is configured."""
        if not _settings.calculator_url:
            return []
        from agents.mcp import MCPServerStreamableHttp

        params: MCPServerStreamableHttpParams = {"url": _settings.calculator_url, "timeout": 5}
        return [
            MCPServerStreamableHttp(params=params, name="calculator", cache_tools_list=True, client_session_timeout_seconds=10)
        ]

    def build_agent(self) -> agents.Agent[Any]:
        servers = self.mcp_servers
        return triage_agents(model_for, servers) if servers else shared_triage_agents(hash(self.name) % SHARED_SETS)


SHARED_SETS = 8


@functools.cache
def shared_triage_agents(index: int) -> agents.Agent[Any]:
    """The triage agents of instances without MCP servers, one of `SHARED_SETS` sets per process:
    those instances differ in nothing, and building three SDK agents costs ~1.5 ms of CPU, once per
    activation if each had its own. Several sets rather than one, because the SDK keeps, per agent,
    a list of the runs using it and scans it at every turn (one agent in 32 concurrent runs cost
    ~4 % of a worker's CPU). The SDK supports an agent in concurrent runs as long as its tools
    list is left alone."""
    return triage_agents(model_for)


def triage_agents(model: Callable[[Policy], agents.Model], mcp_servers: Sequence[MCPServer] = ()) -> agents.Agent[Any]:
    """The triage demo's SDK agents (Triage Agent, History Tutor, Math Tutor), with `model(policy)`
    as each agent's model: what `Triage` runs, and what `mesh bench`'s plain SDK baseline runs."""
    import agents

    history = agents.Agent(
        name="History Tutor",
        handoff_description="Specialist agent for historical questions",
        instructions="You provide assistance with historical queries. Explain important events and context clearly.",
        model=model(history_policy),
    )
    math = agents.Agent(
        name="Math Tutor",
        handoff_description="Specialist agent for math questions",
        instructions="You provide help with math problems. Explain your reasoning at each step and include examples. "
        "Use the calculate tool, when you have it, for arithmetic.",
        model=model(math_policy),
        mcp_servers=list(mcp_servers),
    )
    return agents.Agent(
        name="Triage Agent",
        instructions="You determine which agent to use based on the user's question: history questions go "
        "to the History Tutor, math questions to the Math Tutor.",
        handoffs=[history, math],
        model=model(triage_policy),
    )


# -- clerk: agents as tools, approval-gated --------------------------------------------------


class CounterAdd(BaseModel):
    """The request of the `counter` agent type (services.demo)."""

    model_config = ConfigDict(extra="forbid")
    add: int = Field(description="Amount to add (may be negative); 0 reads the counter.")


def clerk_policy(view: OfflineView) -> Sequence[TResponseOutputItem]:
    outputs = view.tool_outputs
    if outputs:
        last = outputs[-1]
        if "rejected" in last or "not approved" in last:
            return view.say(f"Clerk: I did not change the counter. {last}")
        return view.say(f"Clerk: done, the counter replied {last}.")
    text = view.last_user_text.lower()
    change = re.search(r"(add|subtract)\s+(-?\d+)\s+(?:to|from)\s+counter\s+([A-Za-z0-9_-]+)", text)
    if change:
        amount = int(change.group(2)) * (-1 if change.group(1) == "subtract" else 1)
        return view.call("add_to_counter", {"instance": change.group(3), "request": {"add": amount}})
    read = re.search(r"(?:read|show|what is)\s+counter\s+([A-Za-z0-9_-]+)", text)
    if read:
        return view.call("read_counter", {"instance": read.group(1), "request": {"add": 0}})
    return view.say("Clerk: say 'add 5 to counter demo' (needs approval) or 'read counter demo'.")


class Clerk(LLMAgent):
    """An LLM agent using the `counter` agents as tools; changing a counter needs a person's approval."""

    type = "clerk"

    def build_agent(self) -> agents.Agent[Any]:
        import agents

        return agents.Agent(
            name="Clerk",
            instructions="You keep the shared counters. Use read_counter to read one (with add 0) and "
            "add_to_counter to change one; changes are checked by a person first.",
            tools=[
                agent_tool(
                    "counter",
                    name="read_counter",
                    request_model=CounterAdd,
                    description='Read a counter: call it with request {"add": 0}.',
                ),
                agent_tool(
                    "counter",
                    name="add_to_counter",
                    request_model=CounterAdd,
                    needs_approval=True,
                    description="Add an amount to a counter; returns the new total.",
                ),
            ],
            model=model_for(clerk_policy),
        )


AGENTS = [Triage, Clerk]
