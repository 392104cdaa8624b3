"""Request ids: a request retried with the same `Mesh-Request-Id` takes effect at most once.

A caller that does not know whether its request ran (no reply in time, `outcome_unknown`) sends it
again with the same id. The owner of the instance answers a request whose id took effect within
`WINDOW_MS` with the original reply instead of running it again, and attaches a request whose id
is queued or running in its mailbox to that one (`mesh.activation`), so hedged retries are safe.

What took effect is known from what was saved, and saved with it. The replies of a batch's
requests with ids ride in the `Mesh-Requests` header of the very KV message that stores the
batch's state, so they are stored exactly when the state is (like `Mesh-Applied`). They keep
riding in every later state write of the instance until they have been copied ("spilled") into a
record message of their own, `_r.<type>.<token>.<spill id>` in the state bucket, expiring after
`RECORD_TTL` seconds. A spill happens once the carried replies pass a threshold that grows with
the square root of what a write adds (4 to 16 KiB: about where carrying bytes in every write costs
as much as writing records more often), and drops them from the header only after JetStream
confirmed the record. So every reply that counts is, at any moment, in the stored state's header
or in a stored record, and a record never names a request whose effect was not stored. The
state header `Mesh-Requests-Until` (unix ms) says until when spilled records may still count;
only then does a new activation list them. An instance that rarely writes never spills: its
replies stay in its header until they run out of the window.

Why not one atomic batch (record + state) per write: on nats-server 2.15 a file-storage atomic
batch commit took 10-90 ms against 0.3 ms for a plain write (measured), on every batch with ids.

Stateless agents keep no request ids: a repeat that reaches the worker where the same id is still
running is attached to it (`Turns.join_stateless`); any other retried request runs again there.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import orjson

from mesh import subjects
from mesh.errors import RequestError

MAX_ID_LENGTH = 128
WINDOW_MS = 120_000  # a request id that took effect is remembered this long
RECORD_TTL = 130  # seconds a spilled record is stored: longer than the window it serves
SKEW_MS = 10_000  # replies written by another worker's clock are kept this much longer, not shorter
SPILL_AT = (4096, 16 * 1024)  # bytes of carried replies past which they go into a record: bounds
MAX_KEPT_REPLY = 64 * 1024  # a larger reply is remembered as taken effect, without its body
MAX_CARRIED = 256 * 1024  # past this (spills keep failing), the oldest carried replies are dropped


_ids = random.Random()  # seeded from the OS; its own, so that a program's random.seed() cannot repeat ids
os.register_at_fork(after_in_child=_ids.seed)  # nor can a forked child repeat its parent's


def new_request_id() -> str:
    """A fresh id: 128 random bits, URL-safe base64 (22 characters). Unique, not secret: from a
    PRNG of this module's own (seeded from the OS), so no system call per call."""
    return base64.urlsafe_b64encode(_ids.getrandbits(128).to_bytes(16)).rstrip(b"=").decode()


def check_request_id(value: str) -> str:
    """`value` if it is a usable request id (1 to 128 printable characters), else `RequestError`."""
    if not 1 <= len(value) <= MAX_ID_LENGTH or not value.isprintable():
        raise RequestError(f"{subjects.HEADER_REQUEST_ID} must be 1 to {MAX_ID_LENGTH} printable characters")
    return value


def records_prefix(key: str) -> str:
    """Where the spilled records of instance `key` are: `_r.<type>.<token>.`."""
    return f"{subjects.REQUEST_RECORDS}.{key}."


_Carried = tuple[int, int, bytes]
"""(serial, unix ms it took effect, entry): `["<id>",<at>,<reply>]`, or `["<id>",<at>,null,1]`
when the reply was too large to keep."""


@dataclass(frozen=True, slots=True)
class Spill:
    """Records to store (`(key, value)`), then `RequestIndex.spilled(spill)` once they are."""

    records: list[tuple[str, bytes]]
    serial: int  # the newest carried entry they hold
    until: int  # unix ms until which they count


class RequestIndex:
    """The replies of the requests that took effect on one instance within the window, by id, and
    those of them that still ride in the state header (carried) rather than in a record."""

    __slots__ = ("_replies", "_order", "_carried", "_carried_bytes", "_serials", "_spill_at", "until", "spilling")

    def __init__(self) -> None:
        self._replies: dict[str, tuple[int, bytes | None]] = {}  # id -> (expires at, unix ms; reply)
        self._order: Fifo[tuple[int, str]] = Fifo()  # (expires at, id), roughly oldest first
        self._carried: Fifo[_Carried] = Fifo()
        self._carried_bytes = 0
        self._serials = itertools.count(1)
        self._spill_at = SPILL_AT[0]
        self.until = 0  # unix ms until which spilled records may count (`Mesh-Requests-Until`)
        self.spilling = False

    def __len__(self) -> int:
        return len(self._replies)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._replies

    def get(self, request_id: str, now_ms: int) -> tuple[bool, bytes | None]:
        """(True, reply) if `request_id` took effect within the window, else (False, None); a
        reply of None means it took effect and its reply was too large to keep."""
        found = self._replies.get(request_id)
        if found is None or found[0] <= now_ms:
            return False, None
        return True, found[1]

    @staticmethod
    def entries(replies: Iterable[tuple[str, bytes]], at_ms: int) -> list[tuple[str, bytes | None, bytes]]:
        """(id, reply kept, entry) of a batch's replies, for `header` and then `took_effect`."""
        found = []
        for request_id, reply in replies:
            kept = reply if len(reply) <= MAX_KEPT_REPLY else None
            found.append((request_id, kept, _entry(request_id, at_ms, kept)))
        return found

    def took_effect(self, entries: list[tuple[str, bytes | None, bytes]], at_ms: int) -> None:
        """The write that carried `entries` (`entries()`, `header(..., entries)`) was stored."""
        expires = at_ms + WINDOW_MS
        added = 0
        for request_id, kept, entry in entries:
            self._keep(request_id, kept, expires)
            self._carry(at_ms, entry)
            added += len(entry)
        self._spill_at = min(SPILL_AT[1], max(SPILL_AT[0], 140 * math.isqrt(added)))
        self._prune(at_ms)

    def header(self, now_ms: int, adding: Sequence[tuple[str, bytes | None, bytes]] = ()) -> str | None:
        """The `Mesh-Requests` value of the next state write: the carried replies still within the
        window, plus `adding` (`entries()` of the batch being written, at `now_ms`)."""
        carried = self._carried
        while carried and carried[0][1] + WINDOW_MS + SKEW_MS <= now_ms and not self.spilling:
            self._carried_bytes -= len(carried.popleft()[2])
        while self._carried_bytes > MAX_CARRIED and not self.spilling:
            # Records cannot be written (see the spill warnings): rather than let the state write
            # outgrow a message, the oldest retries lose their protection.
            self._carried_bytes -= len(carried.popleft()[2])
        parts = [c[2] for c in carried]
        parts.extend(entry for _, _, entry in adding)
        if not parts:
            return None
        value = b"[" + b",".join(parts) + b"]"
        if value.isascii():
            return value.decode()
        return json.dumps(orjson.loads(value), separators=(",", ":"))  # header values stay ASCII

    def spill_due(self) -> bool:
        """True once the carried replies pass the threshold (and no spill is under way)."""
        return not self.spilling and self._carried_bytes >= self._spill_at

    def spill(self, key: str, spill_id: str, limit: int) -> Spill:
        """The records that take the carried replies out of the header, each at most `limit` bytes."""
        records: list[tuple[str, bytes]] = []
        parts: list[bytes] = []
        size = 2
        for _, _, entry in self._carried:
            if parts and size + len(entry) + 1 > limit:
                records.append((f"{records_prefix(key)}{spill_id}.{len(records)}", b"[" + b",".join(parts) + b"]"))
                parts, size = [], 2
            parts.append(entry)
            size += len(entry) + 1
        records.append((f"{records_prefix(key)}{spill_id}.{len(records)}", b"[" + b",".join(parts) + b"]"))
        serial, at, _ = self._carried[-1]
        return Spill(records, serial, at + WINDOW_MS)

    def spilled(self, spill: Spill) -> None:
        """The spill's records are stored: its replies no longer ride in the header."""
        self.until = max(self.until, spill.until)
        carried = self._carried
        while carried and carried[0][0] <= spill.serial:
            self._carried_bytes -= len(carried.popleft()[2])

    def load_header(self, value: str, now_ms: int) -> int:
        """Take in the replies a stored state's `Mesh-Requests` header carries (they go on riding
        in the header); returns how many counted."""
        self._carried.clear()
        self._carried_bytes = 0
        return self._load(value.encode(), now_ms, carry=True)

    def load_records(self, records: Iterable[bytes], now_ms: int) -> int:
        """Take in the replies of spilled records; returns how many counted."""
        return sum(self._load(raw, now_ms, carry=False) for raw in records)

    def _load(self, raw: bytes, now_ms: int, *, carry: bool) -> int:
        try:
            entries = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return 0
        counted = 0
        for entry in entries if isinstance(entries, list) else ():
            try:
                request_id, at = str(entry[0]), int(entry[1])
                reply = None if len(entry) > 3 else orjson.dumps(entry[2])
            except (IndexError, TypeError, ValueError):
                continue
            expires = at + WINDOW_MS + SKEW_MS  # another worker's clock wrote `at`: keep it longer, not shorter
            if expires <= now_ms:
                continue
            if request_id not in self._replies:
                self._keep(request_id, reply, expires)
            if carry:
                self._carry(at, _entry(request_id, at, reply))
            counted += 1
        self._prune(now_ms)
        return counted

    def _keep(self, request_id: str, reply: bytes | None, expires: int) -> None:
        self._replies[request_id] = (expires, reply)
        self._order.append((expires, request_id))

    def _carry(self, at: int, entry: bytes) -> None:
        self._carried.append((next(self._serials), at, entry))
        self._carried_bytes += len(entry)

    def _prune(self, now_ms: int) -> None:
        order, replies = self._order, self._replies
        while order and order[0][0] <= now_ms:
            expires, request_id = order.popleft()
            found = replies.get(request_id)
            if found is not None and found[0] == expires:
                del replies[request_id]


_T = TypeVar("_T")


class Fifo(Generic[_T]):
    """A first-in, first-out queue on a list, for the two queues every instance that took a request
    id holds: a `collections.deque` allocates a 64-slot block (~600 bytes) on its first item, which
    made those two queues the largest part of an idle instance (100,000 of them: ~120 MB)."""

    __slots__ = ("_items", "_head")

    def __init__(self) -> None:
        self._items: list[_T] = []
        self._head = 0  # items before it were taken out

    def __len__(self) -> int:
        return len(self._items) - self._head

    def __iter__(self) -> Iterator[_T]:
        return itertools.islice(self._items, self._head, None)

    def __getitem__(self, index: int) -> _T:
        """The oldest item (0) or the newest (-1); an IndexError when empty, as a deque's."""
        if not self:
            raise IndexError("empty queue")
        return self._items[self._head] if index == 0 else self._items[index if index < 0 else self._head + index]

    def append(self, item: _T) -> None:
        self._items.append(item)

    def popleft(self) -> _T:
        if not self:
            raise IndexError("pop from an empty queue")
        item = self._items[self._head]
        self._head += 1
        if self._head == len(self._items):
            self.clear()
        elif self._head >= 32 and 2 * self._head >= len(self._items):
            del self._items[: self._head]  # amortized: each item is moved at most once per halving
            self._head = 0
        return item

    def clear(self) -> None:
        self._items.clear()
        self._head = 0


def _entry(request_id: str, at: int, reply: bytes | None) -> bytes:
    if reply is None:
        return b"[%s,%d,null,1]" % (orjson.dumps(request_id), at)
    return b"[%s,%d,%s]" % (orjson.dumps(request_id), at, reply)
