"""Request/reply over one reply inbox per connection, for the requests on the hot path.

nats-py's `Client.request` already multiplexes replies over one wildcard inbox, but every call
also pays for `asyncio.wait_for` (a timer in the loop's heap, created and cancelled), a random
token read from the OS and a done-callback. Every call between agents, every forward and every
state write is such a request, so the mesh keeps its own table of waiting futures: same protocol,
same subjects, less Python. Long timeouts (the usual 5-30 s) share one sweep every `SWEEP` seconds
instead of a timer each, so they fire up to `SWEEP` late; short ones keep a timer of their own.

A timeout never fires on a reply that has already arrived. After the event loop was blocked or the
process paused, asyncio runs the due timers in the same iteration as it learns that the socket is
readable, before nats-py's read loop has parsed what came in: a reply may be sitting in the socket
while its request is declared timed out (a state write that was stored would then be reported as
not). So a sweep (or a timer) that runs late by more than `STALL` expires nothing that round, and
the read loop drains the socket first; it postpones only one round in a row, so a loop that is
merely busy still sees its timeouts fire.

`exchange` sends one logical request several times (the retries of `MeshClient`): every attempt
gets its own reply token and all of them stay registered until the exchange ends, so the first
reply to any attempt wins.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh._nats.connection import Connection, Message, Subscription
from mesh._nats.errors import map_errors
from mesh._nats.inline import serve_inline
from mesh._nats.outbox import publish, publish_now
from mesh.errors import ConnectionFailed, MeshError, MeshTimeout, NoResponders

NO_RESPONDERS = "503"
SWEEP = 0.1  # seconds between checks for expired requests
OWN_TIMER_BELOW = 1.0  # timeouts shorter than this get a precise timer of their own
STALL = SWEEP  # a sweep or timer this late means the loop was stalled: let the read loop run first
_NEVER = float("inf")


@dataclass(slots=True)
class Exchanged:
    """How an `exchange` ended: the final reply, or what the attempts got when time ran out."""

    reply: Message | None  # the final reply, else the last reply the judge wanted retried (None: no attempt answered)
    final: bool  # `reply` is final: the judge did not ask for another attempt
    attempts: int  # how many times the request was sent
    unanswered: int  # attempts without any reply when the exchange ended


def no_responders(msg: Message) -> bool:
    """True for the server's "no responders" status reply (nobody was subscribed to the subject)."""
    return not msg.data and bool(msg.headers) and msg.headers.get("Status") == NO_RESPONDERS  # type: ignore[union-attr]


class ReplyInbox:
    """The futures of one connection's requests, resolved by one subscription on `<inbox>.*`.

    It holds its connection and subscription weakly: `inbox_of` keeps inboxes in a mapping keyed
    weakly by connection, and a strong path from the value back to the key (the subscription holds
    its connection) would keep every closed connection alive for good.
    """

    def __init__(self, nc: Connection) -> None:
        self._nc = weakref.ref(nc)
        self._prefix = ""
        self._waiting: dict[str, tuple[asyncio.Future[Any] | _Exchange, float]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._sub: weakref.ref[Subscription] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_due = 0.0  # when the scheduled sweep should run
        self._postponed = False  # the last sweep expired nothing because it ran late

    @property
    def nc(self) -> Connection:
        nc = self._nc()
        if nc is None:  # only reachable through a stray reference to the inbox of a collected connection
            raise ConnectionFailed("the connection of this reply inbox is gone")
        return nc

    @property
    def subscription(self) -> Subscription | None:
        """The reply subscription, once the first request made it."""
        return self._sub() if self._sub is not None else None

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
            timer = loop.call_later(timeout, _expire_on_time, future, loop.time() + timeout)
            self._waiting[token] = (future, _NEVER)
        else:
            self._waiting[token] = (future, loop.time() + timeout)
            if self._sweeper is None:
                self._start_sweeping(loop)
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

    async def exchange(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float,  # noqa: ASYNC109 - the exchange's own deadline, swept like a request's
        headers: dict[str, str] | None = None,
        judge: Callable[[Message, bool], float | None],
        resend: tuple[float, float] = (0.5, 2.0),
        may_hedge: Callable[[], bool] | None = None,
        first: str | None = None,
    ) -> Exchanged:
        """Send `data` on `subject` until a reply is final or `timeout` has passed.

        The same bytes are sent again (with a new reply token) when no reply came within an attempt
        time (`resend[0]`, doubling up to `resend[1]`), or when `judge(reply, pending)` returns a
        delay, in seconds, after which to try again (None: the reply is final; `pending` says
        whether an earlier attempt is still unanswered, whose reply may yet decide). Earlier
        attempts stay registered, so the first final reply to any of them wins; each reply is
        judged as it arrives, so none is lost. A resend while an earlier attempt is still unanswered (a hedge)
        happens only when `may_hedge()` allows it, else it is put off (a budget: under overload,
        when every reply is slow, hedging would multiply the load). `first`, if given, is where the
        first attempt goes instead of `subject` (a guess of the fastest route: the owner's worker
        subject); every later attempt goes to `subject`. Raises what publishing raises,
        for the first attempt only (nothing was sent then); a later attempt that cannot be sent is
        tried again at the next resend.
        """
        if self._sub is None:
            await self._subscribe()
        loop = asyncio.get_running_loop()
        waiting = self._waiting
        now = loop.time()
        deadline = now + timeout
        tokens: list[str] = []
        ex = _Exchange(judge, now, tokens, waiting)
        wait = resend[0]
        wake_key = ""  # an entry that is no reply subject, to wake the exchange when no attempt does
        try:
            while ex.final is None:
                wakeup = ex.wakeup = loop.create_future()
                for token in tokens:  # earlier attempts: a reply still counts; none sets the time
                    if token in waiting:
                        waiting[token] = (ex, _NEVER)
                if ex.send_at <= now and tokens and may_hedge is not None and _any_in(tokens, waiting) and not may_hedge():
                    ex.send_at = now + SWEEP  # over the hedging budget: ask again a little later
                carrier = ""
                if ex.send_at <= now:
                    token = f"{next(self._ids):x}"
                    waiting[token] = (ex, _NEVER)
                    to = first if first is not None and not tokens else subject
                    tokens.append(token)
                    try:
                        if not publish_now(self.nc, to, data, headers, self._prefix + token):
                            await publish(self.nc, to, data, headers, self._prefix + token)
                        carrier = token
                    except MeshError:
                        if len(tokens) == 1:
                            raise
                        waiting.pop(token, None)  # not sent: no reply can come to it
                    ex.send_at, wait = now + wait, min(wait * 2, resend[1])
                    if ex.final is not None:
                        break
                wake = min(ex.send_at, deadline)
                timer = None
                if wake == deadline and deadline - now < OWN_TIMER_BELOW:
                    timer = loop.call_later(deadline - now, _expire_on_time, wakeup, deadline)
                else:
                    if carrier in waiting:  # the attempt just sent carries the time (no extra entry)
                        waiting[carrier] = (ex, wake)
                        if wake_key:
                            waiting.pop(wake_key, None)
                    else:
                        wake_key = wake_key or f"~{next(self._ids):x}"
                        waiting[wake_key] = (wakeup, wake)
                    if self._sweeper is None:
                        self._start_sweeping(loop)
                try:
                    await wakeup
                except TimeoutError:
                    pass
                finally:
                    if timer is not None:
                        timer.cancel()
                now = loop.time()
                if ex.final is None and now >= deadline:
                    break
            unanswered = sum(1 for token in tokens if token in waiting) if len(tokens) > 1 or ex.final is None else 0
            return Exchanged(ex.final or ex.last, ex.final is not None, len(tokens), unanswered)
        finally:
            for token in tokens:
                waiting.pop(token, None)
            if wake_key:
                waiting.pop(wake_key, None)

    def _start_sweeping(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep_due = loop.time() + SWEEP
        self._sweeper = loop.call_later(SWEEP, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._sweep_due > STALL and not self._postponed:
            # Stalled: replies that came meanwhile may still be unread in the socket. Expire
            # nothing now; the read loop runs before the next sweep.
            self._postponed = True
        else:
            self._postponed = False
            for future, deadline in list(self._waiting.values()):
                if deadline <= now:
                    _expire(future)
        if self._waiting:
            self._start_sweeping(loop)
        else:
            self._sweeper = None

    async def _subscribe(self) -> None:
        async with self._lock:
            if self._sub is None:
                prefix = self.nc.new_inbox() + "."
                with map_errors("subscribe to the reply inbox"):
                    sub = await self.nc.subscribe(prefix + "*", cb=self._on_reply)
                serve_inline(sub, self._resolve)  # replies resolved from the read loop, no task hop
                self._prefix = prefix
                self._sub = weakref.ref(sub)

    async def _on_reply(self, msg: Message) -> None:
        """The subscription's callback: used only when the handoff is off (see `selfcheck`)."""
        self._resolve(msg)

    def _resolve(self, msg: Message) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)


class _Exchange:
    """The attempts of one `exchange`, as the inbox sees them: a reply to any attempt is judged at
    once (`set_result`, called by the read loop) and wakes the exchange, to send again or return;
    the sweep expiring the newest attempt's time wakes it too (`set_exception`)."""

    __slots__ = ("judge", "send_at", "tokens", "waiting", "final", "last", "wakeup")

    def __init__(
        self,
        judge: Callable[[Message, bool], float | None],
        send_at: float,
        tokens: list[str],
        waiting: dict[str, Any],
    ) -> None:
        self.judge = judge
        self.send_at = send_at  # when to send the next attempt (loop time)
        self.tokens = tokens  # every attempt's reply token
        self.waiting = waiting  # the inbox's table: a token still there is an unanswered attempt
        self.final: Message | None = None
        self.last: Message | None = None  # the last reply the judge wanted retried
        self.wakeup: asyncio.Future[None] | None = None

    def done(self) -> bool:
        return self.final is not None

    def set_result(self, msg: Message) -> None:
        delay = self.judge(msg, len(self.tokens) > 1 and _any_in(self.tokens, self.waiting))
        if delay is None:
            self.final = msg
        else:
            self.last = msg
            self.send_at = min(self.send_at, asyncio.get_running_loop().time() + delay)
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def set_exception(self, exc: BaseException) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_exception(exc)


def _any_in(tokens: list[str], waiting: dict[str, Any]) -> bool:
    return any(token in waiting for token in tokens)


def _expire(future: asyncio.Future[Any] | _Exchange) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _expire_on_time(future: asyncio.Future[Any], due: float) -> None:
    """A request's own timer: expire it, unless the timer ran so late that the loop was stalled
    and the reply may be unread in the socket (then once more after `SWEEP`, see the module doc)."""
    if future.done():
        return
    loop = asyncio.get_running_loop()
    if loop.time() - due > STALL:
        loop.call_later(SWEEP, _expire, future)
    else:
        _expire(future)


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
