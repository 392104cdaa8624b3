"""The runtime against a real nats-server: turns, state, errors, names, cycles, eviction."""

import asyncio
import time
from collections import Counter as Tally

import nats
import orjson
import pytest
from core_agents import AGENTS
from pydantic import BaseModel

from mesh import (
    Agent,
    AgentError,
    BadJson,
    CallCycle,
    MeshClient,
    MeshTimeout,
    NameInvalid,
    NoResponders,
    PayloadTooLarge,
    RuntimeOptions,
    SchemaMismatch,
    StateConflict,
    StateInvalid,
    StateTooLarge,
    Unavailable,
    instance_key,
)
from mesh.bus import Bucket, open_bucket
from mesh.testing import eventually


async def state_bucket(client: MeshClient) -> Bucket:
    return await open_bucket(client.nc, "mesh_state")


async def test_counter_keeps_state_per_name(mesh_factory, mesh_client) -> None:
    await mesh_factory(AGENTS)
    assert await mesh_client.call("counter", "a", {"add": 2}) == {"value": 2}
    assert await mesh_client.call("counter", "a", {"add": 3}) == {"value": 5}
    assert await mesh_client.call("counter", "b", {"add": 1}) == {"value": 1}
    assert await mesh_client.state("counter", "a") == {"value": 5}
    assert await mesh_client.state("counter", "never") is None


async def test_each_bad_request_gets_its_error_and_the_next_one_succeeds(mesh_factory, mesh_client) -> None:
    await mesh_factory(AGENTS)
    nc = mesh_client.nc
    cases = [
        (b"{not json", BadJson, 400),
        (b'{"add": "three"}', SchemaMismatch, 422),
        (b'{"add": 1, "extra": true}', SchemaMismatch, 422),
        (b'{"add": ' + b" " * 300_000 + b"1}", PayloadTooLarge, 413),
    ]
    for body, error, status in cases:
        msg = await nc.request("agents.counter.c", body, timeout=5)
        assert msg.headers["Nats-Service-Error-Code"] == str(status)
        assert msg.headers["Mesh-Error-Code"] == error.code
        assert orjson.loads(msg.data)["error"]["code"] == error.code
        with pytest.raises(error):
            await mesh_client.call("counter", "c", body)
        assert await mesh_client.call("counter", "c", {"add": 1}) == {"value": 1 + cases.index((body, error, status))}
    with pytest.raises(AgentError, match="RuntimeError: boom"):
        await mesh_client.call("faulty", "f", {"action": "raise"})
    assert await mesh_client.call("faulty", "f", {"action": "ok"}) == {"value": 1, "activations": 1, "changes": 0}
    stored = await mesh_client.state("faulty", "f")
    assert (stored["value"], stored["activations"], stored["changes"]) == (1, 1, 1)  # the hook ran in the turn


async def test_nats_max_payload_is_a_clear_error(mesh_factory, mesh_client) -> None:
    await mesh_factory(AGENTS)
    with pytest.raises(PayloadTooLarge):
        await mesh_client.call("echo", "e", "x" * 2_000_000)
    assert await mesh_client.call("echo", "e", "fine") == "fine"


async def test_unknown_type_is_no_responders(mesh_factory, mesh_client) -> None:
    await mesh_factory(AGENTS)
    with pytest.raises(NoResponders):
        await mesh_client.call("nobody", "x", {})


async def test_bad_state_is_never_written(mesh_factory, mesh_client) -> None:
    await mesh_factory(AGENTS)
    assert (await mesh_client.call("faulty", "s", {"action": "ok"}))["value"] == 1
    with pytest.raises(StateTooLarge):
        await mesh_client.call("faulty", "s", {"action": "big"})
    with pytest.raises(StateInvalid):
        await mesh_client.call("faulty", "s", {"action": "invalid"})
    with pytest.raises(AgentError):
        await mesh_client.call("faulty", "s", {"action": "raise"})
    stored = await mesh_client.state("faulty", "s")
    assert stored["value"] == 1 and stored["blob"] == ""
    assert (await mesh_client.call("faulty", "s", {"action": "read"}))["value"] == 1


HOSTILE = ["a.b", "*", ">", "a b", "ünï", "x" * 256, "a=2Eb", "=", "$SYS.x", "alice@example.com"]


async def test_hostile_names_reach_only_their_own_instance(mesh_factory, mesh_client) -> None:
    await mesh_factory(AGENTS)
    for i, name in enumerate(HOSTILE, start=1):
        assert await mesh_client.call("counter", name, {"add": i}) == {"value": i}
    bucket = await state_bucket(mesh_client)
    keys = set(await bucket.keys("counter."))
    assert keys == {instance_key("counter", n) for n in HOSTILE}
    for i, name in enumerate(HOSTILE, start=1):
        assert await mesh_client.state("counter", name) == {"value": i}
    for bad in ["", "x" * 257]:
        with pytest.raises(NameInvalid):
            await mesh_client.call("counter", bad, {"add": 1})


async def test_raw_subjects_cannot_alias_or_escape(mesh_factory, mesh_client) -> None:
    await mesh_factory(AGENTS)
    nc = mesh_client.nc
    await mesh_client.call("counter", "a", {"add": 1})
    for token in ["=61", "=2e", "=ZZ"]:  # would alias "a", or is not an encoding at all
        msg = await nc.request(f"agents.counter.{token}", b'{"add": 1}', timeout=5)
        assert msg.headers["Mesh-Error-Code"] == "name_invalid"
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request("agents.counter.a.b", b'{"add": 1}', timeout=5)
    assert await mesh_client.state("counter", "a") == {"value": 1}


async def test_call_cycle_fails_fast(mesh_factory, mesh_client) -> None:
    await mesh_factory(AGENTS)
    started = time.monotonic()
    with pytest.raises(CallCycle, match="hop/a"):
        await mesh_client.call("hop", "a", {"path": ["hop/b", "hop/a"]}, timeout=20)
    with pytest.raises(CallCycle):
        await mesh_client.call("hop", "self", {"path": ["hop/self"]}, timeout=20)
    assert time.monotonic() - started < 20  # well inside the deadline, not by timing out
    reply = await mesh_client.call("hop", "a", {"path": ["hop/b", "hop/c"]})
    assert [step["at"] for step in reply["trail"]] == ["hop/a", "hop/b", "hop/c"]
    assert len({step["trace"] for step in reply["trail"]}) == 1  # one trace id across agents
    # The failed cycle turns changed nothing that was saved: a, b and self ran 1 good turn each at most.
    assert await mesh_client.state("hop", "a") == {"hops": 1}


async def test_a_stale_writer_never_overwrites_state(mesh_factory, mesh_client) -> None:
    await mesh_factory(AGENTS)
    assert await mesh_client.call("counter", "x", {"add": 1}) == {"value": 1}
    bucket = await state_bucket(mesh_client)
    key = instance_key("counter", "x")
    _, revision = await bucket.get(key)
    await bucket.write(key, b'{"value": 41}', revision)  # someone else wrote behind the owner's back
    with pytest.raises(StateConflict):
        await mesh_client.call("counter", "x", {"add": 1})
    assert await mesh_client.state("counter", "x") == {"value": 41}
    assert await mesh_client.call("counter", "x", {"add": 1}) == {"value": 42}  # reloaded, not overwritten


async def test_idle_instances_are_released_and_come_back_with_their_state(mesh_factory, mesh_client) -> None:
    runtime = await mesh_factory(AGENTS, RuntimeOptions(idle_timeout=0.3))
    await mesh_client.call("faulty", "idle", {"action": "ok"})
    assert instance_key("faulty", "idle") in runtime.activations
    directory = await open_bucket(mesh_client.nc, "mesh_dir")

    async def released() -> bool:
        assert not runtime.activations
        entry = await directory.get(instance_key("faulty", "idle"))
        assert entry is not None and entry[0] == b"-", entry  # marked free, not deleted
        return True

    await eventually(released, timeout=10)
    reply = await mesh_client.call("faulty", "idle", {"action": "ok"})
    assert reply["value"] == 2 and reply["activations"] == 2


async def test_a_large_eviction_hands_memory_back_and_loses_nothing(mesh_factory, mesh_client, monkeypatch) -> None:
    import mesh.runtime

    trims: list[int] = []
    monkeypatch.setattr(mesh.runtime, "RETURN_MEMORY_AFTER", 5)
    monkeypatch.setattr(mesh.runtime, "return_memory", lambda: trims.append(1))
    # All 100 are created well within the idle timeout, so they go in one or two sweeps of 0.5 s.
    runtime = await mesh_factory(AGENTS, RuntimeOptions(idle_timeout=2.0))
    await asyncio.gather(*(mesh_client.call("counter", f"bulk{i}", {"add": i}) for i in range(100)))
    before = runtime.activations
    await eventually(lambda: not runtime.activations and trims, timeout=15)
    assert runtime.activations is not before  # rebuilt: the dict that held 100 entries is gone
    replies = await asyncio.gather(*(mesh_client.call("counter", f"bulk{i}", {"add": 1}) for i in range(100)))
    assert [r["value"] for r in replies] == [i + 1 for i in range(100)]


class TurnsState(BaseModel):
    turns: int = 0


async def test_turns_of_one_instance_are_serial_and_of_different_instances_parallel(mesh_factory, mesh_client) -> None:
    running: Tally[str] = Tally()
    most_at_once: Tally[str] = Tally()
    started: set[str] = set()
    both_started = asyncio.Event()

    class Meeting(Agent[TurnsState]):
        """Counts its turns in progress; a `meet` turn waits until instances a and b are both in a turn."""

        type = "meeting"

        async def on_request(self, request: str) -> int:
            running[self.name] += 1
            most_at_once[self.name] = max(most_at_once[self.name], running[self.name])
            try:
                if request == "meet":
                    started.add(self.name)
                    if started >= {"a", "b"}:
                        both_started.set()
                    async with asyncio.timeout(5):  # serial turns would never meet: the first one times out
                        await both_started.wait()
                else:
                    for _ in range(3):
                        await asyncio.sleep(0)  # room for another turn of this instance to slip in, if one could
                self.state.turns += 1
                return self.state.turns
            finally:
                running[self.name] -= 1

    await mesh_factory([Meeting])
    replies = await asyncio.gather(*(mesh_client.call("meeting", "one", "step") for _ in range(200)))
    assert sorted(replies) == list(range(1, 201))  # each turn saw the state the one before it saved
    assert most_at_once["one"] == 1
    # Each turn of a and b waits for the other to have started: both start before either ends.
    assert await asyncio.gather(mesh_client.call("meeting", "a", "meet"), mesh_client.call("meeting", "b", "meet")) == [1, 1]
    assert both_started.is_set() and most_at_once["a"] == most_at_once["b"] == 1


async def test_discovery_lists_each_type_as_a_micro_service(mesh_factory, mesh_client) -> None:
    runtime = await mesh_factory(AGENTS)
    infos = await mesh_client.services()
    assert {i["name"] for i in infos} == {"counter", "echo", "hop", "faulty", "sleeper"}
    counter = next(i for i in infos if i["name"] == "counter")
    assert counter["endpoints"][0]["subject"] == "agents.counter.*"
    assert counter["metadata"]["mesh.worker"] == runtime.worker_id
    await mesh_client.call("counter", "d", {"add": 1})
    stats = orjson.loads((await mesh_client.nc.request("$SRV.STATS.counter", b"", timeout=5)).data)
    assert stats["endpoints"][0]["num_requests"] >= 1
    assert stats["endpoints"][0]["data"]["turns"] >= 1


async def test_deadline_travels_with_nested_calls(mesh_factory, mesh_client) -> None:
    await mesh_factory(AGENTS)
    direct = await mesh_client.call("hop", "d1", {}, timeout=5)
    assert 0 < direct["remaining"] <= 5
    nested = await mesh_client.call("hop", "d2", {"path": ["hop/d3"], "timeout": 60}, timeout=5)
    assert 0 < nested["remaining"] <= 5  # the inner call never waits longer than the outer caller


async def test_send_is_fire_and_forget_and_emit_publishes_events(mesh_factory, mesh_client) -> None:
    await mesh_factory(AGENTS)
    events = await mesh_client.nc.subscribe("events.hop.>")
    await mesh_client.send("counter", "ff", {"add": 2})
    await mesh_client.send("counter", "ff", {"add": "not a number"})  # fails in its turn, logged only
    await mesh_client.send("counter", "ff", {"add": 3})

    async def both_good_sends_ran() -> bool:
        assert await mesh_client.state("counter", "ff") == {"value": 5}
        return True

    await eventually(both_good_sends_ran, timeout=10)
    await mesh_client.call("hop", "e.1", {"emit": True})
    event = await events.next_msg(timeout=5)
    assert event.subject == "events.hop.e=2E1.visited"
    assert orjson.loads(event.data)["at"] == "hop/e.1"
    assert event.headers["traceparent"].startswith("00-")


async def test_workers_ride_out_a_nats_server_restart(mesh_factory, mesh_client, nats_server) -> None:
    options = RuntimeOptions(lease_ttl=2, heartbeat=0.3)
    runtimes = [await mesh_factory(AGENTS, options) for _ in range(2)]
    for i in range(20):
        assert await mesh_client.call("counter", f"z{i}", {"add": 1}) == {"value": 1}
    nats_server.stop()
    # Fenced once a lease has gone unrenewed for its TTL: no worker may act as owner any more.
    await eventually(lambda: all(rt.directory.fenced() for rt in runtimes), timeout=10)
    await nats_server.start()
    await eventually(lambda: not any(rt.directory.fenced() for rt in runtimes) and mesh_client.nc.is_connected, timeout=20)
    for i in range(20):
        # NoResponders and the like while the workers resubscribe after the reconnect.
        reply = await eventually(
            lambda i=i: mesh_client.call("counter", f"z{i}", {"add": 1}, timeout=5),
            timeout=30,
            interval=0.1,
            retry=(NoResponders, MeshTimeout, Unavailable),
        )
        assert reply == {"value": 2}, f"z{i}"
    for i in range(20):
        assert await mesh_client.state("counter", f"z{i}") == {"value": 2}


async def test_observers_see_every_turn_and_state_write(mesh_factory, mesh_client, nats_server) -> None:
    from mesh.bus import NatsOptions, connect
    from mesh.observe import StateRecord, TurnRecord
    from mesh.runtime import Runtime

    class Recorder:
        def __init__(self) -> None:
            self.turns: list[TurnRecord] = []
            self.states: list[StateRecord] = []

        def on_turn(self, record: TurnRecord) -> None:
            self.turns.append(record)

        def on_state_saved(self, record: StateRecord) -> None:
            self.states.append(record)

    recorder = Recorder()
    nc = await connect(NatsOptions.from_url(nats_server.url))
    async with Runtime(nc, AGENTS, observers=[recorder]):
        await mesh_client.call("counter", "o", {"add": 1})
        with pytest.raises(SchemaMismatch):
            await mesh_client.call("counter", "o", {"add": "x"})
        await mesh_client.call("echo", "o", 1)
    await nc.close()
    assert [(t.agent_type, t.outcome) for t in recorder.turns] == [
        ("counter", "ok"),
        ("counter", "schema_mismatch"),
        ("echo", "ok"),
    ]
    assert all(t.started_at <= t.ended_at for t in recorder.turns)
    assert [(s.agent_type, s.name, s.size) for s in recorder.states] == [("counter", "o", len(b'{"value":1}'))]


async def test_state_without_a_directory_entry_is_never_overwritten(mesh_factory, mesh_client) -> None:
    """A fresh directory claim skips reading state; state that exists anyway is still protected."""
    await mesh_factory(AGENTS)
    bucket = await state_bucket(mesh_client)
    await bucket.write(instance_key("counter", "ghost"), b'{"value": 10}', 0)  # e.g. a wiped directory
    with pytest.raises(StateConflict):
        await mesh_client.call("counter", "ghost", {"add": 1})
    assert await mesh_client.state("counter", "ghost") == {"value": 10}
    assert await mesh_client.call("counter", "ghost", {"add": 1}) == {"value": 11}


async def test_stop_lets_the_turns_in_flight_finish_and_returns_as_soon_as_the_last_one_ends(mesh_factory, mesh_client) -> None:
    runtime = await mesh_factory(AGENTS)
    calls = [asyncio.create_task(mesh_client.call("sleeper", f"s{i}", 0.3 + 0.2 * i)) for i in range(2)]
    await eventually(lambda: len(runtime._tasks) == 2)  # both turns are waiting in their handlers
    started = time.monotonic()
    await runtime.stop(grace=10.0)
    took = time.monotonic() - started
    assert await asyncio.gather(*calls) == [0.3, 0.5]  # answered, not cut off
    assert 0.3 < took < 2.0  # woken when the last turn ended, not at the end of the grace period
