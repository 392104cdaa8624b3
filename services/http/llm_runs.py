"""One message to an LLM instance, followed: the run's text deltas as they arrive, then its reply.

The OpenAI-compatible API and A2A both send a user message as `{"op": "message", "input", "run_id"}`
with a run id the bridge chose, so the `text_delta` events of this run can be told from those of
other runs of the same instance (turns of one instance queue, and a shared name may have several
callers). The bridge subscribes to the instance's `text_delta` events before it sends, so none is
missed; a worker publishes a run's events before its reply on one connection, and the bridge's
read loop queues them before it resolves the reply, so draining the subscription after the reply
yields every delta of the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import orjson

from mesh import subjects
from mesh.approvals import new_run_id
from mesh.bus import Message, Subscription, request, subscribe, unsubscribe
from mesh.errors import BadReply, MeshError, MeshTimeout, NoResponders
from mesh.llm import LLMReply
from services.catalog import AgentType, group
from services.http.bridge import Bridge

Send = Callable[[], Awaitable[bytes]]

__all__ = ["LLMReply", "follow_run", "is_llm", "llm_type", "llm_types", "message_body", "new_run_id"]


INFO_WAIT = 5.0
"""Seconds to wait for one type's `$SRV.INFO.<type>` (no worker at all answers at once)."""


def is_llm(agent: AgentType) -> bool:
    """An LLM agent type: its published request schema takes `{"op": "approvals"}`."""
    return agent.admits_op("approvals")


async def llm_types(bridge: Bridge) -> list[AgentType]:
    """The LLM agent types being served (the bridge's discovery, cached for a moment)."""
    return [t for t in await bridge.types() if is_llm(t)]


async def llm_type(bridge: Bridge, agent_type: str) -> AgentType | None:
    """`agent_type` if it is an LLM agent type being served.

    Not in the cached discovery (just started, or its workers did not answer `$SRV.INFO` within
    the discovery wait, as under load): asked once more by name, on `$SRV.INFO.<type>`, where the
    first worker's answer is enough. So a busy mesh never turns a served model into a 404."""
    subjects.check_type(agent_type)
    for found in await bridge.types():
        if found.type == agent_type:
            return found if is_llm(found) else None
    try:
        reply = await request(bridge.nc, f"$SRV.INFO.{agent_type}", b"", timeout=INFO_WAIT)
        info = orjson.loads(reply.data)
    except (NoResponders, MeshTimeout, orjson.JSONDecodeError):
        return None
    found_now = group([info]) if isinstance(info, dict) else []
    return found_now[0] if found_now and found_now[0].type == agent_type and is_llm(found_now[0]) else None


def message_body(text: str, run_id: str) -> bytes:
    return orjson.dumps({"op": "message", "input": text, "run_id": run_id})


def parse_reply(reply: bytes, source: str) -> LLMReply:
    try:
        return LLMReply.model_validate_json(reply)
    except ValueError as exc:
        raise BadReply(f"the reply of {source} is not an LLM reply: {str(exc)[:300]}") from exc


async def follow_run(bridge: Bridge, agent_type: str, name: str, run_id: str, send: Send) -> AsyncGenerator[str | LLMReply, None]:
    """Yield the run's text deltas (`str`) while `send()` waits for the instance, then its `LLMReply`.

    `send` makes the request(s) of the run (a message, or the decisions that resume a paused run);
    its `MeshError` is raised here after the deltas that came before it. Use it inside
    `contextlib.aclosing`: closing it early stops waiting (the turn itself runs to its end).
    """
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_event(msg: Message) -> None:
        queue.put_nowait(msg.data)  # one item per message, so the drain below can count on it

    def delta_of(data: bytes) -> str | None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if isinstance(event, dict) and event.get("run_id") == run_id and isinstance(event.get("delta"), str):
            return str(event["delta"])
        return None

    loop = asyncio.get_running_loop()
    sub = await subscribe(bridge.nc, subjects.event_subject(agent_type, name, "text_delta"), cb=on_event)
    call: asyncio.Task[bytes] = loop.create_task(_awaited(send))
    getter: asyncio.Task[bytes] | None = None
    try:
        while not call.done():
            getter = getter or loop.create_task(queue.get())
            await asyncio.wait({getter, call}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                data, getter = getter.result(), None
                if (delta := delta_of(data)) is not None:
                    yield delta
        if getter is not None:
            getter.cancel()
            (late,) = await asyncio.gather(getter, return_exceptions=True)
            getter = None
            if isinstance(late, bytes) and (delta := delta_of(late)) is not None:
                yield delta
        # Everything published before the reply is in `queue` or still in the subscription's own
        # queue, on its way to `on_event`: neither wait can hang.
        while not queue.empty() or sub.pending_msgs:
            if (delta := delta_of(await queue.get())) is not None:
                yield delta
        yield parse_reply(call.result(), f"{agent_type}/{name}")
    finally:
        # Under a cancelled response (client gone) every await here would be cancelled again:
        # release the subscription and the request from a task of the bridge instead.
        bridge.spawn(_release(sub, call, getter))


async def _awaited(send: Send) -> bytes:
    return await send()


async def _release(sub: Subscription, call: asyncio.Task[bytes], getter: asyncio.Task[bytes] | None) -> None:
    for task in (call, getter):
        if task is not None and not task.done():
            task.cancel()
    await asyncio.gather(call, *([getter] if getter else []), return_exceptions=True)
    try:
        await unsubscribe(sub)
    except MeshError:
        pass  # the connection is closing: the subscription went with it


def reply_text(reply: LLMReply) -> str:
    """The run's final output as text (JSON for structured outputs; '' while it awaits approval)."""
    if reply.output is None:
        return ""
    if isinstance(reply.output, str):
        return reply.output
    return orjson.dumps(reply.output).decode()


def approval_links(agent_type: str, name: str, approval_id: str) -> dict[str, str]:
    """The bridge routes that decide one approval."""
    from urllib.parse import quote

    base = f"/agents/{agent_type}/{quote(name, safe='')}/approvals/{quote(approval_id, safe='')}"
    return {"approve": f"{base}/approve", "reject": f"{base}/reject"}


def approvals_text(agent_type: str, name: str, reply: LLMReply) -> str:
    """A person-readable note naming each pending approval of a paused run, and how to decide it."""
    lines = [f"The run {reply.run_id} is waiting for approval:"]
    for approval in reply.approvals:
        links = approval_links(agent_type, name, approval.id)
        lines.append(
            f"- {approval.tool}({approval.arguments}) - approval {approval.id}; approve: POST {links['approve']}, "
            f"reject: POST {links['reject']}"
        )
    return "\n".join(lines)


def approvals_json(agent_type: str, name: str, reply: LLMReply) -> list[dict[str, Any]]:
    return [
        {
            "id": a.id,
            "tool": a.tool,
            "arguments": a.arguments,
            "agent": a.agent,
            "expires_at": a.expires_at.isoformat(),
            **approval_links(agent_type, name, a.id),
        }
        for a in reply.approvals
    ]
