"""`TaskSet.start`: a coroutine started at once behaves as it would in a task."""

from __future__ import annotations

import asyncio
import contextvars
import logging

import pytest
import structlog
from structlog.testing import LogCapture

from mesh.tasks import TaskSet

current: contextvars.ContextVar[int | None] = contextvars.ContextVar("current", default=None)


async def test_a_coroutine_that_never_waits_finishes_without_a_task() -> None:
    tasks = TaskSet(structlog.get_logger())
    done: list[int] = []

    async def quick() -> None:
        token = current.set(1)
        done.append(1)
        current.reset(token)

    assert tasks.start(quick()) is None
    assert done == [1] and not tasks and current.get() is None


async def test_a_waiting_coroutine_goes_on_as_a_task_in_a_context_of_its_own() -> None:
    tasks = TaskSet(structlog.get_logger())
    seen: list[int | None] = []

    async def turn(i: int) -> int:
        token = current.set(i)
        await asyncio.sleep(0.01)
        seen.append(current.get())  # each coroutine still sees its own value after waiting
        await asyncio.sleep(0)
        current.reset(token)
        return i * 10

    started = [tasks.start(turn(i)) for i in range(5)]
    assert current.get() is None  # the starter's context was not touched
    assert all(isinstance(t, asyncio.Task) for t in started)
    assert await asyncio.gather(*started) == [0, 10, 20, 30, 40]  # type: ignore[arg-type]
    assert sorted(seen) == [0, 1, 2, 3, 4]  # type: ignore[type-var]
    assert not tasks  # finished tasks leave the set


async def test_cancellation_and_errors_reach_the_coroutine_and_the_log() -> None:
    events: list[str] = []
    captured = LogCapture()
    log = structlog.wrap_logger(None, processors=[captured], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    tasks = TaskSet(log)

    async def waits_forever() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            events.append("cancelled inside")
            await asyncio.sleep(0.01)  # cleanup that itself waits
            events.append("cleaned up")
            raise

    task = tasks.start(waits_forever())
    assert task is not None
    await asyncio.sleep(0)  # one loop iteration: the task takes its first step, resuming the coroutine's wait
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["cancelled inside", "cleaned up"]

    async def fails_later() -> None:
        await asyncio.sleep(0.001)
        raise ValueError("boom")

    failing = tasks.start(fails_later())
    assert failing is not None
    with pytest.raises(ValueError, match="boom"):
        await failing

    async def fails_at_once() -> None:
        raise ValueError("at once")

    assert tasks.start(fails_at_once()) is None  # logged, not raised into the caller

    # Each failure is logged once, as an error with its exception; a cancellation is not a failure.
    logged = [(e["event"], e["log_level"], repr(e["exc_info"])) for e in captured.entries]
    assert logged == [
        ("task.failed", "error", "ValueError('boom')"),
        ("task.failed", "error", "ValueError('at once')"),
    ]


async def test_wait_empty_returns_when_the_last_task_ends_including_tasks_added_while_waiting() -> None:
    tasks = TaskSet(structlog.get_logger())
    await tasks.wait_empty()  # nothing running: returns at once
    first_done = asyncio.Event()
    order: list[str] = []

    async def first() -> None:
        await first_done.wait()
        order.append("first")
        tasks.spawn(second())  # added while someone waits for the set to empty

    async def second() -> None:
        await asyncio.sleep(0)
        order.append("second")

    tasks.spawn(first())
    waiter = asyncio.get_running_loop().create_task(tasks.wait_empty())
    await asyncio.sleep(0)
    assert not waiter.done()
    first_done.set()
    async with asyncio.timeout(5):
        await waiter
    assert order == ["first", "second"] and not tasks


async def test_a_task_spawned_with_a_fresh_context_does_not_see_the_spawners_values() -> None:
    tasks = TaskSet(structlog.get_logger())
    token = current.set(7)

    async def read() -> int | None:
        return current.get()

    try:
        inherited = tasks.spawn(read())
        fresh = tasks.spawn(read(), context=contextvars.Context())
        assert await inherited == 7
        assert await fresh is None
    finally:
        current.reset(token)
