"""`mesh.testing`: `eventually`, the one way the tests wait for a condition, and `wait_serving`."""

from __future__ import annotations

import asyncio

import pytest

from mesh.bus import NatsServer
from mesh.testing import eventually, wait_serving


async def test_eventually_returns_the_first_truthy_value_of_a_sync_or_async_probe() -> None:
    answers = iter([None, 0, [], "ready"])
    assert await eventually(lambda: next(answers), interval=0) == "ready"

    calls = 0

    async def probe() -> int:
        nonlocal calls
        calls += 1
        assert calls >= 3, f"only {calls} calls"
        return calls

    assert await eventually(probe, interval=0) == 3


async def test_eventually_fails_at_the_deadline_naming_the_last_failure() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()

    def probe() -> bool:
        raise AssertionError(f"still waiting at {loop.time() - started:.2f}")

    with pytest.raises(AssertionError, match=r"not true within 0\.2 s; last: AssertionError: still waiting at 0\.[12]"):
        await eventually(probe, timeout=0.2, interval=0.01)
    assert 0.2 <= loop.time() - started < 1.0

    with pytest.raises(AssertionError, match="the probe returned False"):
        await eventually(lambda: False, timeout=0.05)


async def test_eventually_cuts_off_a_probe_that_hangs() -> None:
    never = asyncio.Event()

    async def hangs() -> bool:
        await never.wait()
        return True

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AssertionError, match=r"within 0\.1 s; last: the probe was still running \(before that: no answer yet"):
        await eventually(hangs, timeout=0.1)
    assert loop.time() - started < 1.0


async def test_eventually_retries_only_the_errors_it_is_told_mean_not_yet() -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("leader election")
        return "ok"

    assert await eventually(flaky, interval=0, retry=(ConnectionError,)) == "ok"
    with pytest.raises(ZeroDivisionError):
        await eventually(lambda: 1 / 0)  # a bug in the probe fails at once, not at the deadline


async def test_waiting_for_a_type_nobody_serves_yet_keeps_probing_and_times_out_with_a_clear_error(
    nats_server: NatsServer,
) -> None:
    # Until a worker subscribes, the server answers each probe with an empty "no responders" status.
    with pytest.raises(AssertionError, match=r"worker w-none does not answer \$SRV.PING.nobody"):
        await wait_serving(nats_server.url, ["nobody"], "w-none", timeout=1.0)
