"""Conversation memory: one append-only JetStream subject per agent instance.

Each conversation item (user message, tool call, tool output, assistant message) is one message on
`mesh_memory.<type>.<name>` in the stream `mesh_memory`. Nothing is ever rewritten, so a
conversation can grow far past the size of one KV value; reading it back is one batched direct
get. An instance keeps at most `max_items` items (older ones are purged after each append), and
`clear_session` purges its subject. `MemorySession` is the SDK's `Session` protocol, so
`Runner.run(..., session=...)` reads and extends it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors as jse
import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from mesh import bus, subjects
from mesh.errors import Unavailable

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.memory import SessionSettings

DEFAULT_MAX_ITEMS = 1000


async def open_memory_stream(js: JetStreamContext) -> None:
    """Create the memory stream the first time (file storage, direct gets); idempotent."""
    config = StreamConfig(
        name=subjects.MEMORY_STREAM,
        subjects=[f"{subjects.MEMORY_STREAM}.>"],
        storage=StorageType.FILE,
        allow_direct=True,
        discard=DiscardPolicy.OLD,
        description="agent-mesh conversation memory",
    )
    await bus.ensure_stream(js, config)


class MemorySession:
    """The conversation of one instance, as an `agents.memory.Session`.

    Only the instance's owner writes (turns never overlap), so appends need no compare-and-set.
    Items read back start at a user message: a bound that cut between a tool call and its output
    would otherwise hand the model an orphan tool result, which model APIs reject.
    """

    def __init__(self, nc: Client, agent_type: str, name: str, *, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        self.session_id = subjects.instance_key(agent_type, name)
        self.session_settings: SessionSettings | None = None
        self.subject = subjects.memory_subject(agent_type, name)
        self.max_items = max_items
        self._nc = nc
        self._js = nc.jetstream()

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        items = [orjson.loads(data) for _, data in await self._read()]
        items = _from_user_message(items)
        if limit is not None:
            items = _from_user_message(items[-limit:]) if limit > 0 else []
        return items

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        if not items:
            return
        try:
            for item in items:
                await self._js.publish(self.subject, orjson.dumps(item), stream=subjects.MEMORY_STREAM)
            await self._js.purge_stream(subjects.MEMORY_STREAM, subject=self.subject, keep=self.max_items)
        except (nats.errors.TimeoutError, jse.ServiceUnavailableError, jse.NoStreamResponseError) as exc:
            raise Unavailable(f"memory stream did not confirm the write: {exc}") from exc

    async def pop_item(self) -> TResponseInputItem | None:
        found = await self._read()
        if not found:
            return None
        seq, data = found[-1]
        await self._js.delete_msg(subjects.MEMORY_STREAM, seq)
        item: TResponseInputItem = orjson.loads(data)
        return item

    async def clear_session(self) -> None:
        await self._js.purge_stream(subjects.MEMORY_STREAM, subject=self.subject)

    async def count(self) -> int:
        """How many items are stored (before the read-side trimming of `get_items`)."""
        return len(await self._read())

    async def _read(self) -> list[tuple[int, bytes]]:
        """Every stored message of this subject, oldest first, via batched direct gets."""
        found: list[tuple[int, bytes]] = []
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        try:
            start = 0
            while True:
                request = {"seq": start, "next_by_subj": self.subject, "batch": 1000}
                await self._nc.publish(f"$JS.API.DIRECT.GET.{subjects.MEMORY_STREAM}", orjson.dumps(request), reply=inbox)
                pending = 0
                while True:
                    try:
                        msg = await sub.next_msg(timeout=5)
                    except (nats.errors.TimeoutError, TimeoutError) as exc:
                        raise Unavailable(f"memory stream did not answer a read of {self.subject}") from exc
                    headers: dict[str, Any] = msg.headers or {}
                    status = headers.get("Status")
                    if status == "404":
                        return found
                    if status:  # 204 end of batch
                        pending = int(headers.get("Nats-Num-Pending", "0") or 0)
                        break
                    found.append((int(headers["Nats-Sequence"]), msg.data))
                if pending <= 0 or not found:
                    return found
                start = found[-1][0] + 1
        finally:
            await sub.unsubscribe()


def _from_user_message(items: list[Any]) -> list[Any]:
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("role") == "user":
            return items[index:]
    return []
