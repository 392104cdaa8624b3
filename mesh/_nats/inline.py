"""Handing a subscription's messages to a plain function, straight from nats-py's read loop.

nats-py puts each message into its subscription's queue, and the subscription's own task takes it
out and awaits the callback: a queue hand-over, a task wake-up and a new coroutine per message. A
worker's agent endpoints only route a message (`Runtime._dispatch` is synchronous, never raises,
and starts the turn itself), so `serve_inline` swaps the queue for one that calls the function
inside `put_nowait`, and stays empty. The reply inbox resolves its replies this way too.

Draining is unchanged: nats-py unsubscribes, waits for the server's round trip (every message sent
before it is handed over on arrival) and then finds the queue empty. The swap needs nats-py
internals (checked by `selfcheck.check_subscription`); without them the subscription
keeps its callback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from mesh._nats import selfcheck
from mesh._nats.connection import Message, Subscription

log = structlog.get_logger("mesh.nats")


def serve_inline(sub: Subscription, handle: Callable[[Message], None]) -> bool:
    """Give `sub`'s messages to `handle` as they are read; False if the subscription keeps its callback."""
    if not selfcheck.check_subscription(sub):
        return False
    sub._pending_queue = _Inline(sub, handle)
    return True


class _Inline(asyncio.Queue[Message]):
    """Stands in for a subscription's message queue in nats-py, calling `handle` in `put_nowait`."""

    def __init__(self, sub: Subscription, handle: Callable[[Message], None]) -> None:
        super().__init__()
        self._sub = sub
        self._handle = handle

    def put_nowait(self, msg: Message) -> None:
        self._sub._pending_size -= len(msg.data)  # nats-py counted it in; nothing stays pending
        try:
            self._handle(msg)
        except Exception:  # never into nats-py's read loop, which would end the connection
            log.exception("subscription.handler_failed", subject=msg.subject[:200])

    async def get(self) -> Message:
        never: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        return await never  # never set: only cancellation (unsubscribe, drain, close) ends the wait

    def task_done(self) -> None:
        return None

    async def join(self) -> None:
        return None
