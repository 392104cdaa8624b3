"""The HTTP bridge's request routes against a real uvicorn, a real nats-server and in-process workers."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from http_agents import Broken, Mailer, Slow, serve_garbled

from mesh import bus
from mesh.testing import eventually
from services.demo import Counter, Echo

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"] == f"urn:agent-mesh:problem:{code}"
    assert "Traceback" not in response.text
    return body


@pytest.fixture
async def runtime(mesh_factory):
    return await mesh_factory([Counter, Echo, Slow, Broken, Mailer])


@pytest.fixture
async def http(runtime, http_factory):
    bridge = await http_factory(timeout=1.0, max_body=4096)
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as client:
        yield client


async def test_post_returns_the_reply_and_state_and_listings_show_it(http) -> None:
    # As curl -d sends it: no JSON content type.
    response = await http.post(
        "/agents/counter/web", content=b'{"add": 2}', headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"value": 2}

    state = await http.get("/agents/counter/web/state")
    assert state.json() == {"type": "counter", "name": "web", "revision": state.json()["revision"], "state": {"value": 2}}
    assert (await http.get("/agents/counter")).json() == {"type": "counter", "instances": ["web"]}
    types = {t["type"]: t for t in (await http.get("/agents")).json()["types"]}
    assert {"counter", "echo", "slow", "broken"} <= set(types)
    assert types["counter"]["workers"] == 1
    assert (await http.get("/healthz")).json() == {"status": "ok"}


async def test_hostile_path_segments_stay_one_name(http) -> None:
    for name in ("*", ">", "a.b", "$SRV.INFO", "x y", "ünï", "=41"):
        response = await http.post(f"/agents/counter/{httpx.URL(path=name).raw_path.decode()}", json={"add": 1})
        assert response.json() == {"value": 1}, name
        assert (await http.get(f"/agents/counter/{httpx.URL(path=name).raw_path.decode()}/state")).json()["name"] == name
    names = (await http.get("/agents/counter")).json()["instances"]
    assert sorted(names) == sorted(["*", ">", "a.b", "$SRV.INFO", "x y", "ünï", "=41"])
    # A type can never be a wildcard or a system subject.
    for agent_type in ("*", ">", "$SRV", "Counter", "a.b"):
        assert_problem(await http.post(f"/agents/{httpx.URL(path=agent_type).raw_path.decode()}/x", json={}), 400, "name_invalid")
    assert_problem(await http.post("/agents/counter/" + "n" * 257, json={"add": 1}), 400, "name_invalid")


async def test_every_error_has_its_status_and_a_problem_body_and_the_bridge_keeps_serving(
    http, mesh_factory, nats_server
) -> None:
    assert_problem(await http.post("/agents/counter/e", content=b"{not json"), 400, "bad_json")
    assert_problem(await http.post("/agents/counter/e", json={"add": "two"}), 422, "schema_mismatch")
    assert_problem(await http.post("/agents/counter/e", json={"add": 1, "extra": True}), 422, "schema_mismatch")
    assert_problem(await http.post("/agents/echo/e", content=b'"' + b"x" * 5000 + b'"'), 413, "payload_too_large")
    unknown = await http.post("/agents/nosuchtype/e", json={})
    assert_problem(unknown, 503, "no_responders")
    assert unknown.headers["retry-after"] == "1"
    assert_problem(await http.post("/agents/slow/e", json={"sleep": 1.5}), 504, "timeout")
    assert_problem(await http.post("/agents/slow/w", json={"sleep": 0.8}, headers={"Prefer": "wait=0.2"}), 504, "timeout")
    body = assert_problem(await http.post("/agents/broken/e", json={}), 500, "handler_error")
    assert body["detail"] == "RuntimeError: boom"
    assert_problem(await http.get("/agents/counter/never-saved/state"), 404, "not_found")
    assert_problem(await http.get("/no/such/route"), 404, "not_found")
    not_allowed = await http.delete("/agents/counter/e")
    assert_problem(not_allowed, 405, "method_not_allowed")
    assert "POST" in not_allowed.headers["allow"]
    assert_problem(await http.get("/runs/nosuchrun"), 404, "not_found")

    # Replies that are not JSON (502) and error codes only the agent knows (passed through).
    nc = await bus.connect(bus.NatsOptions.from_url(nats_server.url))
    try:
        await serve_garbled(nc)

        async def rate_limited(msg) -> None:
            await nc.publish(msg.reply, b"{}", headers={"Nats-Service-Error-Code": "429", "Nats-Service-Error": "slow down"})

        await nc.subscribe("agents.limited.*", cb=rate_limited)
        await nc.flush()
        assert_problem(await http.post("/agents/garbled/e", json={}), 502, "bad_reply")
        assert assert_problem(await http.post("/agents/limited/e", json={}), 429, "mesh_error")["detail"] == "slow down"
    finally:
        await nc.close()

    # Still serving.
    assert (await http.post("/agents/counter/e", json={"add": 5})).json() == {"value": 5}


async def test_body_limit_stays_below_nats_max_payload(http_factory, nats_server) -> None:
    bridge = await http_factory(max_body=64 * 1024 * 1024)
    assert bridge.bridge.max_body < bridge.bridge.nc.max_payload
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        big = b'"' + b"x" * bridge.bridge.nc.max_payload + b'"'
        assert_problem(await client.post("/agents/echo/big", content=big), 413, "payload_too_large")


async def test_idempotency_key_runs_a_post_once_even_across_replicas(http, http_factory) -> None:
    headers = {"Idempotency-Key": "order-1"}
    first = await http.post("/agents/counter/idem", json={"add": 2}, headers=headers)
    again = await http.post("/agents/counter/idem", json={"add": 2}, headers=headers)
    assert first.json() == again.json() == {"value": 2}
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    replica = await http_factory()
    async with httpx.AsyncClient(base_url=replica.url) as other:
        third = await other.post("/agents/counter/idem", json={"add": 2}, headers=headers)
    assert third.json() == {"value": 2} and third.headers["idempotent-replayed"] == "true"
    assert (await http.get("/agents/counter/idem/state")).json()["state"] == {"value": 2}

    # The same key with another body is a client error; a new key runs again.
    assert_problem(await http.post("/agents/counter/idem", json={"add": 3}, headers=headers), 422, "idempotency_key_reused")
    again_new_key = await http.post("/agents/counter/idem", json={"add": 2}, headers={"Idempotency-Key": "order-2"})
    assert again_new_key.json() == {"value": 4}
    assert_problem(await http.post("/agents/counter/idem", json={"add": 2}, headers={"Idempotency-Key": ""}), 400, "bad_request")

    # Errors that were the agent's are kept too: the retry gets the same 422 without running.
    bad = {"Idempotency-Key": "bad-1"}
    assert_problem(await http.post("/agents/counter/idem", json={"add": "x"}, headers=bad), 422, "schema_mismatch")
    replay = await http.post("/agents/counter/idem", json={"add": "x"}, headers=bad)
    assert_problem(replay, 422, "schema_mismatch")
    assert replay.headers["idempotent-replayed"] == "true"


async def test_idempotent_request_in_flight_gets_409_and_one_that_found_no_worker_can_be_retried(
    http, runtime, mesh_factory
) -> None:
    headers = {"Idempotency-Key": "slow-1"}
    first = asyncio.create_task(http.post("/agents/slow/i", json={"sleep": 0.6}, headers=headers))
    await eventually(lambda: "slow.i" in runtime.activations, interval=0.01)  # the key is claimed before the request is sent
    assert_problem(await http.post("/agents/slow/i", json={"sleep": 0.6}, headers=headers), 409, "idempotency_in_progress")
    assert (await first).json() == {"runs": 1}
    assert (await http.post("/agents/slow/i", json={"sleep": 0.6}, headers=headers)).json() == {"runs": 1}
    assert (await http.get("/agents/slow/i/state")).json()["state"] == {"runs": 1}

    # 503 means nothing ran: the key is released, so the retry (once a worker serves the type) runs.
    late = {"Idempotency-Key": "late-1"}
    assert_problem(await http.post("/agents/late/x", json={"add": 1}, headers=late), 503, "no_responders")

    class Late(Counter):
        type = "late"

    await mesh_factory([Late])
    assert (await http.post("/agents/late/x", json={"add": 1}, headers=late)).json() == {"value": 1}


async def test_respond_async_returns_202_and_any_replica_answers_the_poll(http, http_factory) -> None:
    started = await http.post("/agents/slow/bg", json={"sleep": 0.3}, headers={"Prefer": "respond-async"})
    assert started.status_code == 202
    assert started.headers["preference-applied"] == "respond-async"
    location = started.headers["location"]
    assert location == f"/runs/{started.json()['id']}"
    assert started.json()["status"] == "pending"
    replica = await http_factory()
    async with httpx.AsyncClient(base_url=replica.url) as other:

        async def finished() -> httpx.Response | None:
            poll = await other.get(location)
            if poll.status_code == 200:
                return poll
            assert poll.status_code == 202 and poll.json()["status"] == "pending", poll.text
            return None

        poll = await eventually(finished, timeout=10)
    assert poll.json()["status"] == "succeeded"
    assert poll.json()["result"] == {"runs": 1}
    assert poll.json()["agent"] == {"type": "slow", "name": "bg"}

    # Longer than the synchronous timeout is fine in async mode; failures are kept as problems.
    slow = await http.post("/agents/slow/bg", json={"sleep": 1.3}, headers={"Prefer": "respond-async"})
    failing = await http.post("/agents/broken/bg", json={}, headers={"Prefer": "respond-async"})
    results = {}

    async def both_finished() -> bool:
        for started in (slow, failing):
            poll = await http.get(started.headers["location"])
            if poll.status_code == 200:
                results[started.headers["location"]] = poll.json()
        return len(results) == 2

    await eventually(both_finished, timeout=10)
    assert results[slow.headers["location"]]["result"] == {"runs": 2}
    failed = results[failing.headers["location"]]
    assert failed["status"] == "failed" and failed["problem"]["code"] == "handler_error"


async def test_approvals_routes_send_the_llm_agents_control_messages(http, runtime) -> None:
    assert (await http.post("/agents/mailer/ann", json="a@example.com")).json()["status"] == "awaiting_approval"
    await http.post("/agents/mailer/ann", json="b@example.com")
    listed = (await http.get("/agents/mailer/ann/approvals")).json()
    assert [(a["id"], a["tool"]) for a in listed["pending"]] == [("ap1", "send_email"), ("ap2", "send_email")]

    approved = await http.post("/agents/mailer/ann/approvals/ap1/approve")
    assert approved.json()["decision"]["decision"] == "approve"
    rejected = await http.post(
        "/agents/mailer/ann/approvals/ap2/reject", json={"reason": "wrong person"}, headers={"Prefer": "respond-async"}
    )
    assert rejected.status_code == 202

    async def run_finished() -> httpx.Response | None:
        run = await http.get(rejected.headers["location"])
        return run if run.status_code == 200 else None

    run = await eventually(run_finished, timeout=10)
    assert run.json()["result"]["decision"]["reason"] == "wrong person"
    after = (await http.get("/agents/mailer/ann/approvals")).json()
    assert after["pending"] == []
    decided = [(d["id"], d["decision"], d["by"]) for d in after["decisions"]]
    assert decided == [("ap1", "approve", "http"), ("ap2", "reject", "http")]
    assert (await http.get("/agents/mailer/ann/state")).json()["state"]["sent"] == ["a@example.com"]

    # The agent's own errors come back as problems; bad decisions never reach it.
    assert_problem(await http.post("/agents/mailer/ann/approvals/ap1/approve"), 404, "approval_not_found")
    assert_problem(await http.post("/agents/mailer/ann/approvals/ap1/maybe"), 404, "not_found")
    assert_problem(await http.post("/agents/mailer/ann/approvals/ap1/reject", json={"reason": 5}), 400, "bad_request")
    assert_problem(await http.post("/agents/mailer/ann/approvals/ap1/reject", json={"op": "expire"}), 400, "bad_request")

    # Types without approvals get no control messages at all: an empty list, and 404 to decide.
    turns = runtime.stats["echo"].turns
    assert (await http.get("/agents/echo/x/approvals")).json() == {"pending": [], "decisions": []}
    assert (await http.get("/agents/nosuchtype/x/approvals")).json() == {"pending": [], "decisions": []}
    assert_problem(await http.post("/agents/echo/x/approvals/ap1/approve"), 404, "not_found")
    assert runtime.stats["echo"].turns == turns


async def test_problem_bodies_are_json_and_name_the_path(http) -> None:
    body = orjson.loads((await http.post("/agents/counter/p", content=b"[")).content)
    assert body["instance"] == "/agents/counter/p"


async def test_a_run_cut_short_by_a_stopping_bridge_is_reported_not_left_pending(http, http_factory) -> None:
    doomed = await http_factory()
    async with httpx.AsyncClient(base_url=doomed.url) as client:
        started = await client.post("/agents/slow/cut", json={"sleep": 1.0}, headers={"Prefer": "respond-async"})
    assert started.status_code == 202
    doomed.server.should_exit = True
    await doomed.task
    poll = await http.get(started.headers["location"])
    assert poll.status_code == 200
    assert poll.json()["status"] == "failed" and poll.json()["problem"]["code"] == "timeout"
