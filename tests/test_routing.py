"""One hop to the owner: replies name the owner, `MeshClient` addresses it, and a non-owner never runs
a request sent to it (subjects.md, "One hop to the owner"). Two in-process workers on one server."""

import time

import nats
import orjson
from core_agents import AGENTS

from mesh import MeshClient, Runtime, RuntimeOptions, instance_key, subjects
from mesh._nats import worker_subjects_denied
from mesh.bus import NatsOptions, NatsServer, connect
from mesh.runtime import MOVED
from mesh.testing import eventually

INSTANCES = [f"r{i}" for i in range(20)]


def forwarded(*workers: Runtime) -> int:
    return sum(w.forwarded_in["counter"] for w in workers)


def turns(*workers: Runtime) -> int:
    return sum(w.stats["counter"].turns for w in workers)


def owner_of(name: str, *workers: Runtime) -> Runtime:
    [owner] = [
        w
        for w in workers
        if w.activations.get(instance_key("counter", name)) and w.activations[instance_key("counter", name)].owner == w.worker_id
    ]
    return owner


async def fresh_client(url: str) -> MeshClient:
    return MeshClient(await connect(NatsOptions.from_url(url)), default_timeout=10.0)


async def test_repeated_calls_of_a_mesh_client_reach_the_owner_unforwarded_after_the_first(
    mesh_factory, mesh_client, nats_server
) -> None:
    a, b = await mesh_factory(AGENTS), await mesh_factory(AGENTS)
    for name in INSTANCES:  # another client creates them: their owners are spread over a and b
        await mesh_client.call("counter", name, {"add": 1})
    client = await fresh_client(nats_server.url)  # knows no owner yet
    raw = await nats.connect(nats_server.url)
    try:
        before = forwarded(a, b)
        for name in INSTANCES:
            assert (await client.call("counter", name, {"add": 1}))["value"] == 2
            assert client.owner_of("counter", name) == subjects.worker_subject(
                owner_of(name, a, b).worker_id, instance_key("counter", name)
            )
        first_round = forwarded(a, b) - before
        turns_before = turns(a, b)
        for _ in range(9):
            for name in INSTANCES:
                await client.call("counter", name, {"add": 1})
        assert turns(a, b) - turns_before == 9 * len(INSTANCES)
        assert forwarded(a, b) - before == first_round  # none of the 180 later calls was forwarded

        # A plain NATS client on the type subject still works, in two hops half of the time.
        before = forwarded(a, b)
        for name in INSTANCES:
            reply = await raw.request(subjects.agent_subject("counter", name), b'{"add":1}', timeout=10)
            assert orjson.loads(reply.data)["value"] == 12
        assert forwarded(a, b) > before
        for name in INSTANCES:
            assert await client.state("counter", name) == {"value": 12}
    finally:
        await raw.close()
        await client.close()


async def test_a_direct_request_to_a_worker_that_does_not_own_the_instance_does_not_run(
    mesh_factory, mesh_client, nats_server
) -> None:
    a, b = await mesh_factory(AGENTS), await mesh_factory(AGENTS)
    await mesh_client.call("counter", "owned", {"add": 1})
    owner = owner_of("owned", a, b)
    other = b if owner is a else a
    raw = await nats.connect(nats_server.url)
    try:
        turns_before = turns(a, b)
        for headers in ({subjects.HEADER_REQUEST_ID: "direct-1"}, None):  # with a request id and without
            reply = await raw.request(
                subjects.worker_subject(other.worker_id, instance_key("counter", "owned")),
                b'{"add":1}',
                timeout=10,
                headers=headers,
            )
            assert reply.headers is not None
            assert reply.headers[subjects.HEADER_MESH_ERROR] == "unavailable"
            assert reply.headers[subjects.HEADER_ERROR] == MOVED
            assert subjects.HEADER_OWNER not in reply.headers
        assert turns(a, b) == turns_before
        assert await mesh_client.state("counter", "owned") == {"value": 1}
        # Sent to the owner itself, it runs, once, and the reply does not name the owner again.
        reply = await raw.request(
            subjects.worker_subject(owner.worker_id, instance_key("counter", "owned")), b'{"add":1}', timeout=10
        )
        assert orjson.loads(reply.data) == {"value": 2}
        assert not reply.headers
    finally:
        await raw.close()


async def test_an_instance_whose_owner_stopped_is_still_reached_and_its_turn_runs_once(mesh_factory, nats_server) -> None:
    a, b = await mesh_factory(AGENTS), await mesh_factory(AGENTS)
    client = await fresh_client(nats_server.url)
    try:
        for name in INSTANCES:
            await client.call("counter", name, {"add": 1})
        gone = owner_of(INSTANCES[0], a, b)
        stays = b if gone is a else a
        moved = [n for n in INSTANCES if owner_of(n, a, b) is gone]
        assert all(client.owner_of("counter", n) is not None for n in INSTANCES)
        await gone.stop(grace=2.0)  # its subject is gone: the cached owner answers no_responders
        for name in INSTANCES:
            assert (await client.call("counter", name, {"add": 1})) == {"value": 2}
        for name in moved:
            assert client.owner_of("counter", name) == subjects.worker_subject(stays.worker_id, instance_key("counter", name))
            assert await client.state("counter", name) == {"value": 2}
    finally:
        await client.close()


async def test_an_instance_evicted_and_claimed_elsewhere_is_still_reached_and_its_turn_runs_once(
    mesh_factory, nats_server
) -> None:
    # Both idle out quickly: the first owner releases the instance, the other forgets that it forwarded there.
    first = await mesh_factory(AGENTS, RuntimeOptions(idle_timeout=0.5))
    second = await mesh_factory(AGENTS, RuntimeOptions(idle_timeout=0.5))
    key = instance_key("counter", "wanderer")
    client = await fresh_client(nats_server.url)
    raw = await nats.connect(nats_server.url)
    try:
        # The first worker claims it (sent to its own subject: a free entry is claimed there).
        reply = await raw.request(subjects.worker_subject(first.worker_id, key), b'{"add":1}', timeout=10)
        assert orjson.loads(reply.data) == {"value": 1}
        assert await client.call("counter", "wanderer", {"add": 1}) == {"value": 2}
        assert client.owner_of("counter", "wanderer") == subjects.worker_subject(first.worker_id, key)

        async def released() -> bool:
            assert key not in first.activations and key not in second.activations
            return True

        await eventually(released, timeout=10)
        reply = await raw.request(subjects.worker_subject(second.worker_id, key), b'{"add":1}', timeout=10)
        assert orjson.loads(reply.data) == {"value": 3}  # claimed by the other worker now
        turns_before = turns(first, second)
        assert await client.call("counter", "wanderer", {"add": 1}) == {"value": 4}
        assert turns(first, second) == turns_before + 1
        assert client.owner_of("counter", "wanderer") == subjects.worker_subject(second.worker_id, key)
        assert await client.state("counter", "wanderer") == {"value": 4}
    finally:
        await raw.close()
        await client.close()


async def test_a_caller_that_may_not_publish_to_worker_subjects_goes_back_to_the_type_subject(tmp_path) -> None:
    config = tmp_path / "auth.conf"
    config.write_text(
        "authorization { users = [\n"
        "  { user: worker, password: w }\n"
        '  { user: caller, password: c, permissions: { publish: { allow: ["agents.>", "$JS.API.>"] },'
        ' subscribe: { allow: ["_INBOX.>"] } } }\n'
        "] }\n"
    )
    async with NatsServer(tmp_path / "store", config_file=config) as server:
        worker_nc = await connect(NatsOptions.from_url(server.url, user="worker", password="w"))
        runtime = Runtime(worker_nc, AGENTS)
        await runtime.start()
        client = MeshClient(await connect(NatsOptions.from_url(server.url, user="caller", password="c")), default_timeout=10)
        try:
            for value in (1, 2):  # the first reply names the owner; the second call's direct attempt is refused
                assert await client.call("counter", "locked", {"add": 1}) == {"value": value}
            await eventually(lambda: worker_subjects_denied(client.nc), timeout=5)
            started = time.monotonic()
            for value in (3, 4, 5):
                assert await client.call("counter", "locked", {"add": 1}) == {"value": value}
            assert time.monotonic() - started < 0.45  # none waited for a resend
            assert client.owner_of("counter", "locked") is None
        finally:
            await client.close()
            await runtime.stop(grace=2)
            await worker_nc.close()
