"""The processed-ids record of an instance: which durable messages its saved state already includes.

A durable message is acknowledged only after the turn's state is saved, so a crash between the save
and the acknowledgement redelivers a message whose effect is already in the state. The ids of the
most recent applied messages therefore travel *with* the state: they are written in the
`Mesh-Applied` header of the very KV message that holds the state, so the two are saved atomically.
A redelivered message whose id is in the record is answered without running the handler again.
"""

from __future__ import annotations

from collections import deque

import orjson

DEFAULT_KEEP = 128


class AppliedIds:
    """A bounded, ordered set of message ids (the oldest are forgotten first)."""

    __slots__ = ("_order", "_ids", "keep", "dirty")

    def __init__(self, ids: list[str] | None = None, *, keep: int = DEFAULT_KEEP) -> None:
        self.keep = keep
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self.dirty = False
        for msg_id in ids or ():
            self._push(msg_id)

    @classmethod
    def from_header(cls, value: str | None, *, keep: int = DEFAULT_KEEP) -> AppliedIds:
        """Parse the header; a missing or unreadable header is an empty record."""
        if not value:
            return cls(keep=keep)
        try:
            ids = orjson.loads(value)
        except orjson.JSONDecodeError:
            return cls(keep=keep)
        return cls([str(i) for i in ids] if isinstance(ids, list) else [], keep=keep)

    def header(self) -> str:
        return orjson.dumps(list(self._order)).decode()

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._ids

    def __len__(self) -> int:
        return len(self._order)

    def add(self, msg_id: str) -> None:
        if msg_id not in self._ids:
            self._push(msg_id)
            self.dirty = True

    def _push(self, msg_id: str) -> None:
        self._order.append(msg_id)
        self._ids.add(msg_id)
        while len(self._order) > self.keep:
            self._ids.discard(self._order.popleft())
