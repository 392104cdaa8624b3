"""An owner paused (SIGSTOP, its sockets open) for 5, 7 and 10 s under load (20 s: in
test_faults_liveness.py, with the same checks and its own): nothing
acknowledged is lost, nothing is applied twice, every reply tells the truth, and every instance
serves again after the pause.

Three workers with the default 6 s lease, so the pauses straddle it: after 5 s the owner's fence
has lapsed but its lease outlives the pause (nobody may take over); after 7 s the lease has just
expired (a takeover races the resumed owner); after 10 s another worker has taken over.
Two kinds of callers: `MeshClient` (retries, one request id per logical call: every call must
succeed) and raw NATS requests (one attempt, no id: whatever they are told must be true by itself).
"""

import time

import pytest
import pytest_asyncio
from fault_cluster import Frozen, assert_one_owner_at_a_time, loaded, open_cluster, recovered

from mesh.faults import History, pause_for
from mesh.testing import eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory):
    async with open_cluster(tmp_path_factory.mktemp("pause"), workers=3) as cluster:
        yield cluster


@pytest.mark.parametrize("seconds", [5, 7, 10])  # 20 s: test_faults_liveness.py, which checks this too
async def test_owner_paused_under_load_loses_nothing_applies_nothing_twice_and_serves_again(cluster, seconds) -> None:
    names = [f"p{seconds}-{i}" for i in range(12)]
    history = History()
    async with loaded(cluster, names, history):
        await eventually(lambda: len(history.calls) >= 100 and all(history.acknowledged(n) for n in names), timeout=30)
        victim, owned = await cluster.busiest(names)
        wall = time.time()
        pause = await pause_for(victim.pid, seconds)
        frozen = Frozen(victim.index, wall, time.time())
        await eventually(lambda: recovered(history, names, pause.ended), timeout=30)

    finals = await cluster.finals(names)
    print(f"\npaused member {victim.index} (owner of {len(owned)}/{len(names)}) for {pause.seconds:.2f} s: {history.summary()}")
    print(f"  client calls {dict(history.codes(via='client'))}, raw calls {dict(history.codes(via='raw'))}")
    history.assert_counters(finals)
    assert set(history.codes(via="client")) == {"ok"}, history.codes(via="client")
    assert victim.alive()
    assert_one_owner_at_a_time([t for t in cluster.turns() if t["agent_name"] in names], [frozen])
