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

from mesh._nats import selfcheck
from mesh._nats.connection import Connection, Message, Subscription
from mesh._nats.errors import map_errors
from mesh._nats.outbox import publish, publish_now
from mesh.errors import MeshTimeout, NoResponders

NO_RESPONDERS = "503"
SWEEP = 0.1  # seconds between checks for expired requests
OWN_TIMER_BELOW = 1.0  # timeouts shorter than this get a precise timer of their own


class ReplyInbox:
    """The futures of one connection's requests, resolved by one subscription on `<inbox>.*`."""

    def __init__(self, nc: Connection) -> None:
        self.nc = nc
        self._prefix = ""
        self._waiting: dict[str, tuple[asyncio.Future[Message], float]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._sub: Subscription | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(self, subject: str, data: bytes, *, timeout: float, headers: dict[str, str] | None = None) -> Message:  # noqa: ASYNC109 - a deadline per request, swept, not a timer each
        """The reply to `data` sent on `subject`; raises `MeshTimeout`, `NoResponders` or what
        publishing raises (`publish_now`)."""
        if self._sub is None:
            await self._subscribe()
        token = f"{next(self._ids):x}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        timer = None
        if timeout < OWN_TIMER_BELOW:
            timer = loop.call_later(timeout, _expire, future)
            self._waiting[token] = (future, float("inf"))
        else:
            self._waiting[token] = (future, loop.time() + timeout)
            if self._sweeper is None:
                self._sweeper = loop.call_later(SWEEP, self._sweep)
        try:
            if not publish_now(self.nc, subject, data, headers, self._prefix + token):
                await publish(self.nc, subject, data, headers, self._prefix + token)
            msg = await future
        except TimeoutError as exc:
            raise MeshTimeout(f"no reply on {subject} within {timeout:.3g}s") from exc
        finally:
            if timer is not None:
                timer.cancel()
            self._waiting.pop(token, None)
        if not msg.data and msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            raise NoResponders(f"no worker serves {subject}")
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
                with map_errors("subscribe to the reply inbox"):
                    sub = await self.nc.subscribe(prefix + "*", cb=self._on_reply)
                if selfcheck.check_subscription(sub):
                    sub._pending_queue = _Handoff(self, sub)
                self._prefix = prefix
                self._sub = sub

    async def _on_reply(self, msg: Message) -> None:
        """The subscription's callback: used only when the handoff is off (see `selfcheck`)."""
        self._resolve(msg)

    def _resolve(self, msg: Message) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)


class _Handoff(asyncio.Queue[Message]):
    """Stands in for the reply subscription's message queue in nats-py.

    nats-py's read loop puts each message into a subscription's queue (`put_nowait`), and a task
    of the subscription (`_wait_for_msgs`) takes it out (`get`) and awaits the callback: one more
    trip around the event loop per reply, on every request. A reply only has to wake the request
    waiting for it, so this queue does that inside `put_nowait`, from the read loop, and stays
    empty. The subscription's task then waits in `get` for a message that never comes, until
    nats-py cancels it (unsubscribe, drain or close), which ends it cleanly. A subclass of
    `asyncio.Queue`, so any other queue method nats-py calls works on an empty queue.
    """

    def __init__(self, inbox: ReplyInbox, sub: Subscription) -> None:
        super().__init__()
        self._inbox = inbox
        self._sub = sub

    def put_nowait(self, msg: Message) -> None:
        self._sub._pending_size -= len(msg.data)  # nats-py counted it in; nothing stays pending
        self._inbox._resolve(msg)

    async def get(self) -> Message:
        never: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        return await never  # never set: only cancellation (unsubscribe, drain, close) ends the wait

    def task_done(self) -> None:
        return None

    async def join(self) -> None:
        return None


def _expire(future: asyncio.Future[Message]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


_inboxes: weakref.WeakKeyDictionary[Connection, ReplyInbox] = weakref.WeakKeyDictionary()


def inbox_of(nc: Connection) -> ReplyInbox:
    """The connection's reply inbox, created on first use."""
    inbox = _inboxes.get(nc)
    if inbox is None:
        inbox = _inboxes[nc] = ReplyInbox(nc)
    return inbox


async def request(nc: Connection, subject: str, data: bytes, *, timeout: float, headers: dict[str, str] | None = None) -> Message:  # noqa: ASYNC109 - see ReplyInbox.request
    """Request/reply through the connection's reply inbox; raises mesh errors only (`ReplyInbox.request`)."""
    return await inbox_of(nc).request(subject, data, timeout=timeout, headers=headers)
