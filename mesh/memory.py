"""Conversation memory: one append-only JetStream subject per agent instance.

Each conversation item (user message, tool call, tool output, assistant message) is one message on
`mesh_memory.<type>.<name>` in the stream `mesh_memory`. Nothing is ever rewritten, so a
conversation can grow far past the size of one KV value; reading it back is one batched direct
get. An instance keeps at most `max_items` items (older ones are purged after each append), and
`clear_session` purges its subject. `MemorySession` is the SDK's `Session` protocol, so
`Runner.run(..., session=...)` reads and extends it.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import orjson

from mesh import subjects
from mesh._nats import (
    Connection,
    DiscardPolicy,
    JetStream,
    StorageType,
    StreamConfig,
    delete_stored,
    ensure_stream,
    purge,
    read_subject,
    store,
)
from mesh.errors import NoResponders, Unavailable

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.memory import SessionSettings

DEFAULT_MAX_ITEMS = 1000


async def open_memory_stream(js: JetStream) -> None:
    """Create the memory stream the first time (file storage, direct gets); idempotent."""
    config = StreamConfig(
        name=subjects.MEMORY_STREAM,
        subjects=[f"{subjects.MEMORY_STREAM}.>"],
        storage=StorageType.FILE,
        allow_direct=True,
        discard=DiscardPolicy.OLD,
        description="agent-mesh conversation memory",
    )
    await ensure_stream(js, config)


class MemorySession:
    """The conversation of one instance, as an `agents.memory.Session`.

    Only the instance's owner writes (turns never overlap), so appends need no compare-and-set,
    and a session object that has read the whole conversation knows how many items it holds: its
    appends purge older items only when they would pass `max_items` (an `LLMAgent` keeps one
    session per activation, so a run reads and appends without a purge request each time).
    Items read back start at a user message: a bound that cut between a tool call and its output
    would otherwise hand the model an orphan tool result, which model APIs reject.
    """

    def __init__(self, nc: Connection, agent_type: str, name: str, *, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        self.session_id = subjects.instance_key(agent_type, name)
        self.session_settings: SessionSettings | None = None
        self.subject = subjects.memory_subject(agent_type, name)
        self.max_items = max_items
        self._nc = nc
        self._js = nc.jetstream()
        self._count: int | None = None  # items stored, once a read or a purge has told

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        items = [orjson.loads(data) for _, data in await self._read()]
        items = _from_user_message(items)
        if limit is not None:
            items = _from_user_message(items[-limit:]) if limit > 0 else []
        return items

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        if not items:
            return
        count, self._count = self._count, None  # unknown until this write is confirmed
        try:
            for item in items:
                await store(self._js, self.subject, orjson.dumps(item), stream=subjects.MEMORY_STREAM)
            if count is not None and count + len(items) <= self.max_items:
                self._count = count + len(items)
                return
            await purge(self._js, subjects.MEMORY_STREAM, self.subject, keep=self.max_items)
        except (Unavailable, NoResponders) as exc:
            raise Unavailable(f"memory stream did not confirm the write: {exc.message}") from exc
        if count is not None:
            self._count = min(count + len(items), self.max_items)

    async def pop_item(self) -> TResponseInputItem | None:
        found = await self._read()
        if not found:
            return None
        seq, data = found[-1]
        self._count = None
        if await delete_stored(self._js, subjects.MEMORY_STREAM, seq):
            self._count = len(found) - 1
        item: TResponseInputItem = orjson.loads(data)
        return item

    async def clear_session(self) -> None:
        self._count = None
        await purge(self._js, subjects.MEMORY_STREAM, self.subject)
        self._count = 0

    async def count(self) -> int:
        """How many items are stored (before the read-side trimming of `get_items`)."""
        return len(await self._read())

    async def _read(self) -> list[tuple[int, bytes]]:
        """Every stored message of this subject, oldest first, via batched direct gets."""
        found = await read_subject(self._nc, subjects.MEMORY_STREAM, self.subject)
        self._count = len(found)
        return found


# The SDK asks `inspect.signature` of a session method before each call (to learn whether it takes
# `wrapper`), which costs tens of microseconds a time; a signature stored on the function is read
# back instead of being computed again.
def _remember_signature(method: Any) -> None:
    method.__signature__ = inspect.signature(method)


for _method in (MemorySession.get_items, MemorySession.add_items, MemorySession.pop_item, MemorySession.clear_session):
    _remember_signature(_method)


def _from_user_message(items: list[Any]) -> list[Any]:
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("role") == "user":
            return items[index:]
    return []
