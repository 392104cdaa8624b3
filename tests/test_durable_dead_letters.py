"""A message whose turn keeps failing goes to the dead letters after N attempts and can be re-driven."""

from __future__ import annotations

import json

import nats.js.errors
from durable_support import APP, env, log_events, mesh_cli, wait_log

from mesh import subjects
from mesh.testing import eventually


async def dead_letters(url: str) -> list[dict]:
    listed = await mesh_cli(url, "dead-letters")
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


async def test_failing_handler_is_dead_lettered_after_n_attempts_and_redrive_succeeds_after_the_fix(
    nats_server, mesh_client, worker_factory
):
    url = nats_server.url
    broken = await worker_factory(url, app=APP, env=env(MESH_DURABLE_MAX_ATTEMPTS="3"))
    await wait_log(broken, "durable.started")
    await mesh_client.send_durable("picky", "p1", {"n": 7})
    await mesh_client.send_durable("counter", "bad", {"add": "not a number"})  # can never succeed

    async def both_dead_lettered() -> bool:  # read in-process: a `mesh` process per probe costs seconds
        stored = (await mesh_client.nc.jetstream().stream_info(subjects.DEAD_STREAM)).state.messages
        assert stored == 2, f"{stored} dead letters"
        return True

    await eventually(both_dead_lettered, timeout=30, retry=(nats.js.errors.NotFoundError,))
    letters = await dead_letters(url)
    assert len(letters) == 2, letters
    by_type = {d["agent_type"]: d for d in letters}
    picky = by_type["picky"]
    assert (picky["name"], picky["error_code"], picky["attempts"]) == ("p1", "handler_error", 3)
    assert "picky is broken" in picky["error"] and json.loads(picky["payload"]) == {"n": 7}
    failed_turns = [e for e in log_events(broken, "turn.failed") if e.get("agent_type") == "picky"]
    assert len(failed_turns) == 3  # bounded: no retry storm
    schema = by_type["counter"]
    assert (schema["error_code"], schema["attempts"]) == ("schema_mismatch", 1)  # not retried at all

    # Deploy the fix, then re-drive.
    assert await broken.terminate() == 0
    fixed = await worker_factory(url, app=APP, env=env(PICKY_FIXED="1", MESH_DURABLE_MAX_ATTEMPTS="3"))
    await wait_log(fixed, "durable.started")
    redriven = await mesh_cli(url, "dead-letters", "redrive", str(picky["seq"]))
    assert redriven.returncode == 0, redriven.stderr
    state = await eventually(lambda: mesh_client.state("picky", "p1"), timeout=20)
    assert state == {"ok": 1, "seen": [7]}
    assert [d["seq"] for d in await dead_letters(url)] == [schema["seq"]]

    dropped = await mesh_cli(url, "dead-letters", "drop", str(schema["seq"]))
    assert dropped.returncode == 0, dropped.stderr
    assert await dead_letters(url) == []
    missing = await mesh_cli(url, "dead-letters", "redrive", "999")
    assert missing.returncode == 1 and "no dead letter 999" in missing.stderr
    assert await mesh_client.call("picky", "p1", {"n": 8}) == {"ok": 2}  # the worker kept serving
