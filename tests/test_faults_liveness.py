"""Liveness under faults: a frozen owner loses its instances within its lease, a crashed one at once.

- A 20 s pause (SIGSTOP) of one of two workers, with the default 6 s lease: the instances it owned
  answer again within lease TTL + 1 s of the freeze, and the other worker's instances keep
  answering throughout (every call succeeds; their latency, not their error rate, degrades: the
  queue group still hands the frozen worker its share of new requests, which callers resend).
  It is also the "owner paused 20 s" case of test_faults_pause.py: raw NATS callers (one attempt,
  no request id) run alongside, and the counters' verdict must hold. Resumed, the frozen worker
  regains its lease at once (and re-checks the instances it thinks it owns).
- Crash failover: owners SIGKILLed one after another under load (four workers, three killed),
  default lease: p99 <= 1 s from the SIGKILL to a successful reply (a killed worker's socket
  closes, so the server drops its subscriptions and a forward to it gets "no responders" at once:
  no need to wait for the lease).

test_liveness.py has the cases these do not cover (a cut link, a resumed owner's parked requests).
"""

import os
import signal
import time

import pytest
from fault_cluster import loaded, open_cluster, probing, recovered

from mesh.faults import History, pause_for, percentile
from mesh.testing import eventually

pytestmark = pytest.mark.slow

LEASE_TTL = 6.0  # the default, which these tests leave in place
PAUSE = 20.0
KILLS = 3


def longest_silence(ends: list[float], start: float, stop: float) -> float:
    """The longest stretch of [start, stop] without a successful reply (their end times)."""
    points = [start, *sorted(t for t in ends if start < t < stop), stop]
    return max(b - a for a, b in zip(points, points[1:], strict=False))


async def test_during_a_20s_pause_its_instances_answer_again_within_the_lease_and_the_others_keep_answering(tmp_path) -> None:
    names = [f"live-{i}" for i in range(12)]
    history = History()
    async with open_cluster(tmp_path, workers=2) as cluster:
        for name in names:
            await history.observe(name, cluster.add(name), deadline=10, via="client")
        victim, frozen_names = await cluster.busiest(names)
        others = [n for n in names if n not in frozen_names]
        assert frozen_names and others, "both workers should own some of the instances"
        async with probing(cluster, names, history), loaded(cluster, names, history, clients=0, raw=2):
            await eventually(lambda: recovered(history, names, time.monotonic() - 0.5), timeout=10)
            pause = await pause_for(victim.pid, PAUSE)
            await eventually(lambda: recovered(history, names, pause.ended), timeout=30)
        # Resumed long after its lease expired, it renewed at once and re-checks its instances.
        await victim.process.wait_logged('"lease.regained"', timeout=10)
        finals = await cluster.finals(names)

    during = [c for c in history.calls if c.started >= pause.started and c.started < pause.ended]
    answered_again = {
        n: min((c.ended for c in history.of(n) if c.ok and c.started >= pause.started), default=float("inf")) - pause.started
        for n in frozen_names
    }
    silences = {n: longest_silence([c.ended for c in history.of(n) if c.ok], pause.started, pause.ended) for n in others}
    other_latencies = [c.latency for c in during if c.instance in others and c.ok]
    frozen_latencies = [c.latency for c in during if c.instance in frozen_names and c.ok]
    print(
        f"\n{PAUSE:.0f} s pause of member {victim.index}: its {len(frozen_names)} instances answered again after "
        f"{max(answered_again.values()):.2f} s (lease {LEASE_TTL:.0f} s); the other {len(others)}: longest silence "
        f"{max(silences.values()):.2f} s, latency p50 {percentile(other_latencies, 50):.3f} s "
        f"p99 {percentile(other_latencies, 99):.3f} s max {max(other_latencies, default=0):.3f} s; "
        f"frozen worker's instances p99 {percentile(frozen_latencies, 99):.3f} s; {history.summary()}"
    )
    assert max(answered_again.values()) <= LEASE_TTL + 1.0, answered_again
    assert set(history.codes(via="client")) == {"ok"}, history.codes(via="client")
    assert max(silences.values()) < LEASE_TTL, silences  # never as dark as the frozen worker's instances
    history.assert_counters(finals)


async def test_crash_failover_p99_from_sigkill_to_a_successful_reply_is_under_a_second(tmp_path) -> None:
    names = [f"crash-{i}" for i in range(12)]
    history = History()
    kills: list[tuple[float, list[str]]] = []
    async with open_cluster(tmp_path, workers=KILLS + 1) as cluster:  # no restarts: one is left at the end
        async with loaded(cluster, names, history, clients=8, raw=0):
            await eventually(lambda: len(history.calls) >= 100 and all(history.acknowledged(n) for n in names), timeout=30)
            for _ in range(KILLS):
                victim, owned = await cluster.busiest(names)
                killed_at = time.monotonic()
                os.kill(victim.pid, signal.SIGKILL)
                kills.append((killed_at, owned))
                await victim.process.kill()  # reaps it
                await eventually(lambda: recovered(history, owned, killed_at), timeout=15)  # noqa: B023 - awaited here
                settled = len(history.calls)
                await eventually(lambda: len(history.calls) >= settled + 50, timeout=15)  # noqa: B023
        finals = await cluster.finals(names)

    samples: list[float] = []
    failed = []
    for killed_at, owned in kills:
        for c in history.calls:
            if c.instance in owned and c.ended > killed_at and c.started < killed_at + 1.0:
                if c.ok:
                    samples.append(c.ended - max(c.started, killed_at))
                else:
                    failed.append(c)
    p99 = percentile(samples, 99)
    print(
        f"\n{len(kills)} SIGKILLs of owners: {len(samples)} calls in flight or started within 1 s of a kill, "
        f"time from the kill to their reply p50 {percentile(samples, 50):.3f} s p99 {p99:.3f} s "
        f"max {max(samples, default=0):.3f} s; {history.summary()}"
    )
    assert not failed, failed[:5]
    assert p99 <= 1.0
    history.assert_counters(finals)
