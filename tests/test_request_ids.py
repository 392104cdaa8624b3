"""A retried request takes effect at most once: `Mesh-Request-Id` at the owner (original replies,
attached repeats, ids saved with the state and loaded by a new activation), `MeshClient`'s retries,
`mesh call --id`, and the HTTP bridge's `Idempotency-Key`. A real nats-server, real runtimes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from core_agents import AGENTS
from pydantic import BaseModel

from mesh import client, subjects, wire
from mesh.agent import Agent
from mesh.bus import Message, NatsOptions, NatsServer, connect, open_bucket, request
from mesh.errors import (
    MeshTimeout,
    NoResponders,
    OutcomeUnknown,
    RequestError,
    SchemaMismatch,
    Unavailable,
)
from mesh.request_ids import RequestIndex, records_prefix
from mesh.runtime import RuntimeOptions
from mesh.testing import eventually
from services.http.idempotency import IdempotencyStore, request_id

ROOT = Path(__file__).parent.parent


class TallyState(BaseModel):
    runs: int = 0


class Tally(Agent[TallyState]):
    """Counts the turns it ran; `{"sleep": s}` makes a turn take that long."""

    type = "tally"

    async def on_request(self, request: dict[str, Any]) -> dict[str, int]:
        await asyncio.sleep(float(request.get("sleep", 0)))
        self.state.runs += 1
        return {"runs": self.state.runs}


def with_id(request_id: str) -> dict[str, str]:
    return {subjects.HEADER_REQUEST_ID: request_id}


async def raw_call(nc: Any, subject: str, body: Any, headers: dict[str, str], timeout: float = 10) -> Any:  # noqa: ASYNC109 - the request's own
    """One request, no retries (what a raw NATS client sends); the reply, or its error raised."""
    msg = await request(nc, subject, wire.dumps(body), timeout=timeout, headers=headers)
    err = wire.error_of(msg.headers, msg.data)
    if err is not None:
        raise err
    return wire.loads(msg.data)


# -- the owner ----------------------------------------------------------------------------------


async def test_a_request_repeated_with_its_id_gets_the_original_reply_and_runs_once(mesh_factory, mesh_client) -> None:
    await mesh_factory([*AGENTS, Tally])
    assert await mesh_client.call("counter", "c", {"add": 2}, request_id="order-1") == {"value": 2}
    assert await mesh_client.call("counter", "c", {"add": 2}, request_id="order-1") == {"value": 2}
    assert await mesh_client.call("counter", "c", {"add": 5}, request_id="order-1") == {"value": 2}  # the id decides
    assert await mesh_client.state("counter", "c") == {"value": 2}
    assert await mesh_client.call("counter", "c", {"add": 1}, request_id="order-2") == {"value": 3}
    assert await mesh_client.call("counter", "c", {"add": 1}) == {"value": 4}  # a fresh id each call
    assert await mesh_client.call("counter", "c", {"add": 1}) == {"value": 5}

    # A request that failed took no effect: its retry with the same id runs.
    with pytest.raises(SchemaMismatch):
        await mesh_client.call("counter", "c", {"add": "x"}, request_id="order-3")
    assert await mesh_client.call("counter", "c", {"add": 1}, request_id="order-3") == {"value": 6}


async def test_repeats_that_arrive_while_the_first_runs_are_attached_to_it(mesh_factory, mesh_client) -> None:
    runtime = await mesh_factory([Tally])
    nc = mesh_client.nc
    subject = subjects.agent_subject("tally", "slow")
    first = asyncio.create_task(raw_call(nc, subject, {"sleep": 0.5}, with_id("same")))
    await eventually(lambda: "tally.slow" in runtime.activations and runtime.activations["tally.slow"].running, interval=0.01)
    repeats = [asyncio.create_task(raw_call(nc, subject, {"sleep": 0.5}, with_id("same"))) for _ in range(3)]
    assert await asyncio.gather(first, *repeats) == [{"runs": 1}] * 4
    assert await mesh_client.state("tally", "slow") == {"runs": 1}
    assert not runtime.activations["tally.slow"].inflight  # nothing left behind


async def test_ids_outlive_the_activation_and_the_worker_that_ran_them(mesh_factory, mesh_client) -> None:
    runtime = await mesh_factory([Tally], RuntimeOptions(idle_timeout=0.3))
    nc = mesh_client.nc
    subject = subjects.agent_subject("tally", "t")
    assert await raw_call(nc, subject, {}, with_id("a")) == {"runs": 1}
    assert await raw_call(nc, subject, {}, with_id("b")) == {"runs": 2}
    await eventually(lambda: "tally.t" not in runtime.activations)  # released after idling
    assert await raw_call(nc, subject, {}, with_id("a")) == {"runs": 1}  # a new activation loaded the ids
    await runtime.stop(grace=2)
    await mesh_factory([Tally])  # another worker
    assert await raw_call(nc, subject, {}, with_id("b")) == {"runs": 2}
    assert await raw_call(nc, subject, {}, with_id("c")) == {"runs": 3}
    assert await mesh_client.state("tally", "t") == {"runs": 3}


async def test_spilled_records_are_loaded_by_a_new_worker_and_never_listed_as_instances(
    mesh_factory, mesh_client, nats_server: NatsServer, http_factory
) -> None:
    runtime = await mesh_factory([*AGENTS, Tally])
    nc = mesh_client.nc
    subject = subjects.agent_subject("tally", "busy")
    ids = [f"spill-{i:03d}-{'x' * 40}" for i in range(120)]  # ~80 bytes each: several spills
    for number, sent in enumerate(ids, 1):
        assert await raw_call(nc, subject, {}, with_id(sent)) == {"runs": number}
    state = await open_bucket(nc, subjects.STATE_BUCKET)
    records = await eventually(lambda: state.keys(records_prefix("tally.busy")))
    assert all(key.startswith("_r.tally.busy.") for key in records)
    found = await state.get_with_headers("tally.busy")
    assert found is not None and int(found[2][subjects.HEADER_REQUESTS_UNTIL]) > time.time() * 1000
    carried = orjson.loads(found[2].get(subjects.HEADER_REQUESTS, "[]"))
    assert len(carried) < len(ids)  # the rest were spilled

    await runtime.stop(grace=2)
    await mesh_factory([*AGENTS, Tally])
    for number in (1, 2, 60, 119, 120):  # spilled early, spilled late, still in the header
        assert await raw_call(nc, subject, {}, with_id(ids[number - 1])) == {"runs": number}
    assert await mesh_client.state("tally", "busy") == {"runs": 120}

    # The records are keys of the state bucket, never instances.
    assert await state.keys("tally.") == ["tally.busy"]
    env = {**os.environ, "NATS_URL": nats_server.url, "PYTHONPATH": str(ROOT)}
    listed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "ls",
        "tally",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(listed.communicate(), 30)
    assert out.decode().split() == ["busy"]
    bridge = await http_factory()
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        assert (await http.get("/agents/tally")).json()["instances"] == ["busy"]
        assert (await http.get("/agents/_r/tally.busy/state")).status_code == 400


async def test_a_malformed_request_id_is_a_bad_request(mesh_factory, mesh_client) -> None:
    await mesh_factory(AGENTS)
    nc = mesh_client.nc
    for agent_type, body in (("counter", {"add": 1}), ("echo", "x")):
        with pytest.raises(RequestError) as caught:
            await raw_call(nc, subjects.agent_subject(agent_type, "bad"), body, with_id("x" * 129))
        assert caught.value.code == "bad_request"
    with pytest.raises(RequestError):
        await mesh_client.call("counter", "bad", {"add": 1}, request_id="")
    assert await mesh_client.call("counter", "bad", {"add": 1}, request_id="y" * 128) == {"value": 1}


async def test_stateless_agents_keep_no_ids(mesh_factory, mesh_client) -> None:
    """Documented: a stateless turn with a repeated id runs again (there is no state to keep ids in)."""
    await mesh_factory(AGENTS)
    assert await mesh_client.call("echo", "e", "a", request_id="r") == "a"
    assert await mesh_client.call("echo", "e", "b", request_id="r") == "b"


async def test_a_stateless_repeat_running_on_the_same_worker_is_attached(mesh_factory, mesh_client) -> None:
    runtime = await mesh_factory(AGENTS)
    subject = subjects.agent_subject("sleeper", "s")
    calls = [raw_call(mesh_client.nc, subject, 0.4, with_id("nap")) for _ in range(3)]
    assert await asyncio.gather(*calls) == [0.4] * 3
    assert runtime.stats["sleeper"].turns == 1
    assert await mesh_client.call("sleeper", "s", 1.2) == 1.2  # hedged after 0.25 s: attached, not run again
    assert runtime.stats["sleeper"].turns == 2
    assert not runtime.turns.stateless


async def test_mesh_call_id_runs_once(mesh_factory, nats_server: NatsServer) -> None:
    await mesh_factory(AGENTS)
    env = {**os.environ, "NATS_URL": nats_server.url, "PYTHONPATH": str(ROOT)}
    outputs = []
    for _ in range(2):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "call",
            "counter/cli",
            '{"add": 3}',
            "--id",
            "cli-1",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        outputs.append((process.returncode, out.decode(), err.decode()))
    assert outputs == [(0, '{"value":3}\n', "")] * 2


def test_the_index_forgets_after_the_window_and_keeps_what_a_header_carried() -> None:
    index = RequestIndex()
    entries = RequestIndex.entries([("a", b'{"v":1}'), ("big", b'"' + b"x" * 70_000 + b'"')], 1_000_000)
    header = index.header(1_000_000, entries)
    index.took_effect(entries, 1_000_000)
    assert index.get("a", 1_000_001) == (True, b'{"v":1}')
    assert index.get("big", 1_000_001) == (True, None)  # took effect; too large to keep
    assert index.get("a", 1_000_000 + 120_000) == (False, None)
    loaded = RequestIndex()
    assert header is not None and loaded.load_header(header, 1_000_500) == 2
    assert loaded.get("a", 1_000_500) == (True, b'{"v":1}')
    assert loaded.header(1_000_500) == header  # carried on until spilled or out of the window
    assert loaded.header(1_000_000 + 140_000) is None


# -- MeshClient's retries -----------------------------------------------------------------------


class Responder:
    """A raw subscriber on `agents.<type>.*` standing in for a worker: attempt n (from 1) of any
    request is answered as `answer(n)` says, `(delay, reply)`, where the reply is a JSON value, a
    `MeshError`, or None for no answer at all. It records every request id it saw."""

    def __init__(self, nc: Any, answer: Any) -> None:
        self.nc = nc
        self.answer = answer
        self.ids: list[str] = []
        self.seen: list[tuple[str, float]] = []  # (request id, when) of every attempt
        self.answered: dict[str, float] = {}  # request id -> when its first answer was sent
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, msg: Message) -> None:
        call_id = (msg.headers or {}).get(subjects.HEADER_REQUEST_ID, "")
        self.ids.append(call_id)
        self.seen.append((call_id, time.monotonic()))
        delay, reply = self.answer(len(self.ids))
        task = asyncio.get_running_loop().create_task(self._reply(msg.reply, call_id, delay, reply))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, subject: str, call_id: str, delay: float, reply: Any) -> None:
        await asyncio.sleep(delay)
        if reply is None:
            return
        if isinstance(reply, Exception):
            await self.nc.publish(subject, wire.error_body(reply), headers=wire.error_headers(reply))
        else:
            await self.nc.publish(subject, wire.dumps(reply))
        self.answered.setdefault(call_id, time.monotonic())

    def most_hedging_at_once(self) -> int:
        """The most calls that were resending at one moment: from a call's first resend until its
        first answer left here (shorter than the client's own count, which ends when the reply arrives)."""
        first_resend: dict[str, float] = {}
        attempts: dict[str, int] = {}
        for call_id, at in self.seen:
            attempts[call_id] = attempts.get(call_id, 0) + 1
            if attempts[call_id] == 2:
                first_resend[call_id] = at
        edges = sorted(
            [(at, 1) for at in first_resend.values()] + [(self.answered[i], -1) for i in first_resend if i in self.answered]
        )
        most = now = 0
        for _, step in edges:
            now += step
            most = max(most, now)
        return most


@contextlib.asynccontextmanager
async def responding(nats_server: NatsServer, agent_type: str, answer: Any) -> AsyncIterator[Responder]:
    nc = await connect(NatsOptions.from_url(nats_server.url))
    responder = Responder(nc, answer)
    try:
        await nc.subscribe(f"agents.{agent_type}.*", cb=responder.handle)
        await nc.flush()
        yield responder
    finally:
        for task in list(responder.tasks):
            task.cancel()
        await asyncio.gather(*responder.tasks, return_exceptions=True)
        await nc.close()


async def test_a_call_without_a_reply_is_resent_with_the_same_id_and_the_first_reply_wins(nats_server, mesh_client) -> None:
    # The first attempt lands on a worker that hangs; the resend, 0.25 s later, is answered.
    async with responding(nats_server, "hung", lambda n: (0, None) if n == 1 else (0, {"ok": n})) as responder:
        started = time.monotonic()
        assert await mesh_client.call("hung", "x", {}) == {"ok": 2}
        assert client.RESEND[0] <= time.monotonic() - started < 2.0
        assert len(responder.ids) == 2 and responder.ids[0] == responder.ids[1] != ""


async def test_an_earlier_attempt_still_counts_after_a_later_one_was_refused(nats_server, mesh_client) -> None:
    answers = {1: (1.5, {"ok": "first"}), 2: (0, Unavailable("shutting down"))}
    async with responding(nats_server, "late", lambda n: answers.get(n, (0, None))) as responder:
        assert await mesh_client.call("late", "x", {}, request_id="keep") == {"ok": "first"}
        assert responder.ids[:2] == ["keep", "keep"]


async def test_an_unsettled_outcome_is_retried_with_its_id_then_reported_unknown(nats_server, mesh_client) -> None:
    async with responding(nats_server, "unsure", lambda n: (0, OutcomeUnknown("ack lost"))) as responder:
        with pytest.raises(OutcomeUnknown):
            await mesh_client.call("unsure", "x", {}, timeout=1.5)
        assert len(responder.ids) >= 3 and len(set(responder.ids)) == 1
    # One attempt unknown, a later one refused: still unknown (the first may have taken effect).
    answers = {1: (0, OutcomeUnknown("ack lost")), 2: (0, SchemaMismatch("no"))}
    async with responding(nats_server, "mixed", lambda n: answers.get(n, (0, None))):
        with pytest.raises(OutcomeUnknown):
            await mesh_client.call("mixed", "x", {}, timeout=3)


async def test_a_call_every_attempt_of_which_was_refused_raises_that_error(nats_server, mesh_client) -> None:
    async with responding(nats_server, "closed", lambda n: (0, Unavailable("lease lapsed"))) as responder:
        with pytest.raises(Unavailable):
            await mesh_client.call("closed", "x", {}, timeout=1.2)
        assert len(responder.ids) >= 3
    async with responding(nats_server, "mute", lambda n: (0, None)):
        with pytest.raises(MeshTimeout):  # nobody answered: it may have run
            await mesh_client.call("mute", "x", {}, timeout=1.2)


async def test_no_responders_is_retried_for_a_second_then_raised(mesh_client) -> None:
    started = time.monotonic()
    with pytest.raises(NoResponders):
        await mesh_client.call("nobody", "x", {})
    assert 0.9 < time.monotonic() - started < 3.0


async def test_hedged_resends_are_budgeted_when_every_call_is_slow(nats_server, mesh_client) -> None:
    async with responding(nats_server, "sluggish", lambda n: (1.6, {"ok": True})) as responder:
        replies = await asyncio.gather(*(mesh_client.call("sluggish", f"n{i}", {}, timeout=10) for i in range(100)))
        assert replies == [{"ok": True}] * 100
        assert len(responder.ids) > 100  # some calls resent
        assert responder.most_hedging_at_once() <= 10  # never more than 10 % of the 100 calls at once


# -- the HTTP bridge ------------------------------------------------------------------------------


async def test_an_idempotency_key_whose_outcome_was_unknown_is_resolved_by_its_retry(nats_server, http_factory) -> None:
    """The mesh stand-in "applies" each request id once and answers as `mode` says: every outcome
    unknown (as an owner whose writes cannot be confirmed), `unavailable` (a worker going away),
    then the original reply."""
    applied: dict[str, int] = {}
    mode = {"now": "unknown"}

    def answer(n: int) -> tuple[float, Any]:
        if mode["now"] == "unavailable":
            return 0, Unavailable("shutting down")
        request_id = responder.ids[-1]
        applied.setdefault(request_id, len(applied) + 1)
        if mode["now"] == "unknown":
            return 0, OutcomeUnknown("the write was sent, its ack never came")
        return 0, {"order": applied[request_id]}

    bridge = await http_factory()
    claims = bridge.bridge.idempotency
    stored_key = IdempotencyStore.storage_key("", "POST", "/agents/shop/alice", "pay-1")

    async def claim_state() -> str:
        found = await claims.get(stored_key)
        return "" if found is None else str(orjson.loads(found[0])["state"])

    async with responding(nats_server, "shop", answer) as responder, httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        headers = {"Idempotency-Key": "pay-1", "Prefer": "wait=1"}
        first = await http.post("/agents/shop/alice", json={"pay": 5}, headers=headers)
        assert first.status_code == 504 and first.json()["code"] == "outcome_unknown"
        assert await claim_state() == "unknown"  # kept, not released

        mode["now"] = "unavailable"  # the retry's send did not run: that says nothing of the first
        second = await http.post("/agents/shop/alice", json={"pay": 5}, headers=headers)
        assert second.status_code == 503
        assert await claim_state() == "unknown"

        mode["now"] = "answers"
        third = await http.post("/agents/shop/alice", json={"pay": 5}, headers=headers)
        assert third.status_code == 200 and third.json() == {"order": 1}  # resent: the original reply
        fourth = await http.post("/agents/shop/alice", json={"pay": 5}, headers=headers)
        assert fourth.json() == {"order": 1} and fourth.headers["idempotent-replayed"] == "true"
        assert await claim_state() == "done"
        assert len(applied) == 1 and set(responder.ids) == {request_id(stored_key)}  # one id for every send
