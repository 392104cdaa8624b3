"""Request/reply over one reply inbox per connection, for the requests on the hot path.

nats-py's `Client.request` already multiplexes replies over one wildcard inbox, but every call
also pays for `asyncio.wait_for` (a timer in the loop's heap, created and cancelled), a random
token read from the OS and a done-callback. Every call between agents, every forward and every
state write is such a request, so the mesh keeps its own table of waiting futures: same protocol,
same subjects, less Python. Long timeouts (the usual 5-30 s) share one sweep every `SWEEP` seconds
instead of a timer each, so they fire up to `SWEEP` late; short ones keep a timer of their own.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from mesh.outbox import publish_now

NO_RESPONDERS = "503"
SWEEP = 0.1  # seconds between checks for expired requests
OWN_TIMER_BELOW = 1.0  # timeouts shorter than this get a precise timer of their own


class NoReply(Exception):
    """Nobody is subscribed to the subject (the server answered 503 at once)."""


class ReplyInbox:
    """The futures of one connection's requests, resolved by one subscription on `<inbox>.*`."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._prefix = ""
        self._waiting: dict[str, tuple[asyncio.Future[Msg], float]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._sub: Any = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(self, subject: str, data: bytes, *, timeout: float, headers: dict[str, str] | None = None) -> Msg:
        """The reply to `data` sent on `subject`; raises `TimeoutError` or `NoReply`."""
        if self._sub is None:
            await self._subscribe()
        token = f"{next(self._ids):x}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        timer = None
        if timeout < OWN_TIMER_BELOW:
            timer = loop.call_later(timeout, _expire, future)
            self._waiting[token] = (future, float("inf"))
        else:
            self._waiting[token] = (future, loop.time() + timeout)
            if self._sweeper is None:
                self._sweeper = loop.call_later(SWEEP, self._sweep)
        try:
            publish_now(self.nc, subject, data, headers, self._prefix + token)
            msg = await future
        finally:
            if timer is not None:
                timer.cancel()
            self._waiting.pop(token, None)
        if not msg.data and msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            raise NoReply(subject)
        return msg

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for future, deadline in list(self._waiting.values()):
            if deadline <= now:
                _expire(future)
        self._sweeper = loop.call_later(SWEEP, self._sweep) if self._waiting else None

    async def _subscribe(self) -> None:
        async with self._lock:
            if self._sub is None:
                prefix = self.nc.new_inbox() + "."
                sub = await self.nc.subscribe(prefix + "*", cb=self._on_reply)
                if hasattr(sub, "_pending_queue") and hasattr(sub, "_pending_size"):
                    sub._pending_queue = _Handoff(self, sub)  # type: ignore[assignment]
                self._prefix = prefix
                self._sub = sub

    async def _on_reply(self, msg: Msg) -> None:
        self._resolve(msg)

    def _resolve(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)


class _Handoff:
    """Stands in for the reply subscription's message queue in nats-py.

    nats-py's read loop puts each message into a subscription's queue, and a task of the
    subscription takes it out and calls the callback: one more trip around the event loop per
    reply, on every request. A reply only has to wake the request waiting for it, so this
    "queue" does that at once. (Should nats-py stop using `_pending_queue`, the subscription
    simply keeps its ordinary queue and `ReplyInbox._on_reply` callback.)
    """

    def __init__(self, inbox: ReplyInbox, sub: Any) -> None:
        self.inbox = inbox
        self.sub = sub

    def put_nowait(self, msg: Msg) -> None:
        self.sub._pending_size -= len(msg.data)  # nats-py counted it in; nothing stays pending
        self.inbox._resolve(msg)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    async def join(self) -> None:
        return None


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


_inboxes: weakref.WeakKeyDictionary[Client, ReplyInbox] = weakref.WeakKeyDictionary()


def inbox_of(nc: Client) -> ReplyInbox:
    """The connection's reply inbox, created on first use."""
    inbox = _inboxes.get(nc)
    if inbox is None:
        inbox = _inboxes[nc] = ReplyInbox(nc)
    return inbox
