"""Background tasks that are kept referenced until they finish, and whose failures are logged.

asyncio keeps only a weak reference to a task, and an exception nobody awaits is lost; every
long-lived object of the mesh (runtime, durable delivery, flight recorder, HTTP bridge, mail
service) spawns its background work through one of these instead of a bare `create_task`, and on
stop either waits for the set to empty (`wait_empty`, woken by the last task's end) or cancels it
(`cancel_all`).
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections.abc import Coroutine, Generator
from typing import Any

import structlog


class TaskSet(set[asyncio.Task[Any]]):
    """A set of running tasks: `spawn` adds one, it removes itself when done."""

    def __init__(self, log: structlog.typing.FilteringBoundLogger, event: str = "task.failed") -> None:
        super().__init__()
        self._log = log
        self._event = event
        self._empty: asyncio.Event | None = None  # made by the first wait_empty()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        """Run `coro` as a task of this set (in `context`, if given: e.g. a fresh one for a timer
        that must not carry the current turn's deadline)."""
        task = asyncio.get_running_loop().create_task(coro, context=context)
        self.add(task)
        task.add_done_callback(self._done)
        return task

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        """Run `coro` at once, up to its first real wait, and make it a task only then.

        A stateless turn seldom waits on anything (publishing its reply only buffers it), so it
        finishes right here: no task, no extra trip around the event loop before the turn starts.
        Python 3.12's eager tasks do the same; this also works on 3.11. The coroutine runs in a
        context of its own from its first step, as it would in a task. Returns None if it finished.
        """
        context = contextvars.copy_context()
        try:
            waiting = context.run(coro.send, None)
        except StopIteration:
            return None
        except (Exception, asyncio.CancelledError) as exc:  # as a task's would be: logged, not raised here
            self._log.error(self._event, exc_info=exc)
            return None
        task = asyncio.get_running_loop().create_task(_finish(coro, waiting), context=context)
        self.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error(self._event, exc_info=exc)
        if not self and self._empty is not None:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Wait until no task of the set is running, including tasks added while waiting.

        Woken by the last task's end, not by polling; bound it with `asyncio.timeout()`.
        """
        while self:
            if self._empty is None:
                self._empty = asyncio.Event()
            self._empty.clear()
            await self._empty.wait()

    async def cancel_all(self, timeout: float = 5.0) -> set[asyncio.Task[Any]]:  # noqa: ASYNC109 - returns the stragglers
        """Cancel every task and wait; returns those still running after `timeout` (rather than
        raising, as a surrounding `asyncio.timeout()` would).

        Cancels again until done: on Python 3.11 a cancellation can be swallowed by an
        `asyncio.wait_for` inside nats-py whose own timeout fires at the same moment.
        """
        pending = set(self)
        deadline = asyncio.get_running_loop().time() + timeout
        while pending and asyncio.get_running_loop().time() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.2)
        return pending


async def _finish(coro: Coroutine[Any, Any, Any], waiting: Any) -> Any:
    return await _resume(coro, waiting)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waiting: Any) -> Generator[Any, None, Any]:
    """Hand what a started coroutine waits on to the task driving us, then let it go on."""
    while True:
        try:
            yield waiting
        except BaseException as exc:  # a cancellation (or any error) thrown in by the task
            try:
                waiting = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        return (yield from coro)
