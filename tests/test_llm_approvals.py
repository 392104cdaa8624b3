"""Durable human approvals: pause, survive every restart, approve or reject from the CLI, expire."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import agents
import pytest
from agents.testing import ScriptedModel, assistant_message, function_call

from mesh import bus, subjects
from mesh.approvals import RunStore
from mesh.bus import NatsServer
from mesh.client import MeshClient
from mesh.errors import ApprovalDecided, ApprovalNotFound, ApprovalPending, SchemaMismatch
from mesh.llm import LLMAgent
from mesh.testing import WorkerFactory
from services.demo import Counter
from services.triage import Clerk

WORKER_ENV = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "MESH_MODEL": ""}


def mesh_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **WORKER_ENV}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args[:1], "--nats-url", url, *args[1:]],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


async def test_an_approval_survives_killing_every_process_and_mesh_approve_resumes_the_run_once(
    tmp_path: Path, worker_factory: WorkerFactory
) -> None:
    server = NatsServer(tmp_path / "store")
    await server.start()
    try:
        workers = [await worker_factory(server.url, env=WORKER_ENV) for _ in range(2)]
        async with MeshClient(await bus.connect(bus.NatsOptions.from_url(server.url))) as client:
            paused = await client.call("clerk", "desk", "add 5 to counter t1", timeout=60)
        assert paused["status"] == "awaiting_approval"
        (approval,) = paused["approvals"]
        assert approval["tool"] == "add_to_counter"
        assert json.loads(approval["arguments"]) == {"instance": "t1", "request": {"add": 5}}
        assert approval["expires_at"] > approval["requested_at"]

        for worker in workers:
            await worker.kill()
        server.stop()
        server = NatsServer(tmp_path / "store", port=server.port)
        await server.start()
        workers = [await worker_factory(server.url, env=WORKER_ENV) for _ in range(2)]

        listed = await asyncio.to_thread(mesh_cli, server.url, "approvals", "clerk/desk")
        assert listed.returncode == 0, listed.stderr
        assert approval["id"] in listed.stdout and "add_to_counter" in listed.stdout

        async with MeshClient(await bus.connect(bus.NatsOptions.from_url(server.url))) as client:
            events = await client.nc.subscribe("events.clerk.desk.run_completed")
            approved = await asyncio.to_thread(mesh_cli, server.url, "approve", "clerk/desk", approval["id"], "--by", "alice")
            assert approved.returncode == 0, approved.stderr
            reply = json.loads(approved.stdout)
            event = json.loads((await events.next_msg(timeout=30)).data)
            assert await client.state("counter", "t1") == {"value": 5}  # the tool ran exactly once
            state = await client.state("clerk", "desk")

            again, unknown = await asyncio.gather(  # independent: at once (each process mostly imports)
                asyncio.to_thread(mesh_cli, server.url, "approve", "clerk/desk", approval["id"]),
                asyncio.to_thread(mesh_cli, server.url, "reject", "clerk/desk", "ap_nope"),
            )
        for worker in workers:
            await worker.terminate()
    finally:
        server.stop()

    assert reply["status"] == "completed" and reply["run_id"] == paused["run_id"]
    assert reply["output"].endswith('the counter replied {"value":5}.')
    assert reply["decision"]["by"] == "alice" and reply["decision"]["decision"] == "approve"
    assert event == {"run_id": paused["run_id"], "agent": "Clerk", "model": "offline-demo", "output": reply["output"]}
    assert state["pending"] == []
    assert [(d["id"], d["decision"], d["by"]) for d in state["decisions"]] == [(approval["id"], "approve", "alice")]
    assert state["runs"][-1]["status"] == "completed" and state["runs"][-1]["output"] == reply["output"]
    assert again.returncode == 1 and "[approval_decided]" in again.stderr and "alice" in again.stderr
    assert unknown.returncode == 1 and "[approval_not_found]" in unknown.stderr


async def test_mesh_reject_completes_the_run_without_running_the_tool(
    nats_server: NatsServer, worker_factory: WorkerFactory, mesh_client: MeshClient
) -> None:
    await worker_factory(nats_server.url, env=WORKER_ENV)
    paused = await mesh_client.call("clerk", "desk", "add 3 to counter t2", timeout=60)
    (approval,) = paused["approvals"]
    rejected = await asyncio.to_thread(
        mesh_cli, nats_server.url, "reject", "clerk/desk", approval["id"], "--reason", "not today", "--by", "bob"
    )
    assert rejected.returncode == 0, rejected.stderr
    reply = json.loads(rejected.stdout)
    assert reply["status"] == "completed"
    assert "rejected by bob (reason: not today)" in reply["output"]
    assert await mesh_client.state("counter", "t2") is None  # the tool never ran
    state = await mesh_client.state("clerk", "desk")
    assert state["decisions"][-1]["decision"] == "reject" and state["decisions"][-1]["reason"] == "not today"


async def test_pending_approval_blocks_new_messages_and_bad_control_messages_get_structured_errors(
    mesh_factory: Any, mesh_client: MeshClient
) -> None:
    await mesh_factory([Clerk, Counter])
    paused = await mesh_client.call("clerk", "d3", "add 1 to counter t3", timeout=60)
    with pytest.raises(ApprovalPending):
        await mesh_client.call("clerk", "d3", "add 2 to counter t3")
    with pytest.raises(SchemaMismatch):
        await mesh_client.call("clerk", "d3", {"op": "approve"})
    with pytest.raises(SchemaMismatch):
        await mesh_client.call("clerk", "d3", {"op": "launch"})
    with pytest.raises(ApprovalNotFound):
        await mesh_client.call("clerk", "d3", {"op": "approve", "id": "ap_0000000000"})
    listing = await mesh_client.call("clerk", "d3", {"op": "approvals"})
    assert [p["id"] for p in listing["pending"]] == [paused["approvals"][0]["id"]]
    done = await mesh_client.call("clerk", "d3", {"op": "approve", "id": paused["approvals"][0]["id"], "by": "x"})
    assert done["status"] == "completed"
    with pytest.raises(ApprovalDecided):
        await mesh_client.call("clerk", "d3", {"op": "reject", "id": paused["approvals"][0]["id"]})
    assert await mesh_client.call("counter", "t3", {"add": 0}) == {"value": 1}


class QuickClerk(Clerk):
    type = "quick-clerk"
    approval_ttl = 1.0


async def test_an_approval_nobody_decides_is_rejected_on_expiry(
    nats_server: NatsServer, mesh_factory: Any, mesh_client: MeshClient
) -> None:
    await mesh_factory([QuickClerk, Counter])
    sub = await mesh_client.nc.subscribe("events.quick-clerk.q.run_completed")
    paused = await mesh_client.call("quick-clerk", "q", "add 9 to counter t4", timeout=60)
    assert paused["status"] == "awaiting_approval"
    event = json.loads((await sub.next_msg(timeout=30)).data)  # nobody sends anything: the timer fires
    assert event["run_id"] == paused["run_id"]
    assert "rejected on expiry" in event["output"]
    state = await mesh_client.state("quick-clerk", "q")
    assert state["pending"] == []
    assert state["decisions"][-1]["by"] == "expiry" and state["decisions"][-1]["decision"] == "reject"
    assert await mesh_client.state("counter", "t4") is None
    with pytest.raises(ApprovalDecided):
        await mesh_client.call("quick-clerk", "q", {"op": "approve", "id": paused["approvals"][0]["id"]})


async def test_the_expiry_timer_is_a_task_of_the_worker_and_is_cancelled_when_the_worker_stops(
    mesh_factory: Any, mesh_client: MeshClient
) -> None:
    runtime = await mesh_factory([Clerk, Counter])  # approvals wait an hour: the timer is still armed at stop
    paused = await mesh_client.call("clerk", "t5", "add 9 to counter t5", timeout=60)
    assert paused["status"] == "awaiting_approval"
    agent = runtime.activations[subjects.instance_key("clerk", "t5")].agent
    assert isinstance(agent, Clerk)
    timer = agent._timer
    assert timer is not None and timer in runtime.background and not timer.done()
    await runtime.stop(grace=2.0)
    assert timer.cancelled() and not runtime.background


sent: list[str] = []


@agents.function_tool(needs_approval=True)
async def send_email(to: str, body: str) -> str:
    """Send an e-mail."""
    sent.append(to)
    return f"sent to {to}"


class Mailer(LLMAgent):
    """Scripted: the model asks for two e-mails in one turn, then sums up what it was told."""

    type = "mailer"
    model: ClassVar[ScriptedModel]

    def build_agent(self) -> agents.Agent[Any]:
        return agents.Agent(name="Mailer", instructions="Send e-mails.", tools=[send_email], model=self.model)


async def test_a_run_resumes_when_all_its_approvals_are_decided_and_the_model_hears_the_rejection(
    mesh_factory: Any, mesh_client: MeshClient
) -> None:
    Mailer.model = ScriptedModel(
        [
            [
                function_call("send_email", {"to": "a@example.com", "body": "hi"}, call_id="c1"),
                function_call("send_email", {"to": "b@example.com", "body": "hi"}, call_id="c2"),
            ],
            [assistant_message("Sent one, the other was refused.")],
        ]
    )
    sent.clear()
    await mesh_factory([Mailer])
    events = await mesh_client.nc.subscribe("events.mailer.m.>")
    paused = await mesh_client.call("mailer", "m", "mail a and b")
    first, second = paused["approvals"]
    assert {first["call_id"], second["call_id"]} == {"c1", "c2"}
    to_a, to_b = (first, second) if first["call_id"] == "c1" else (second, first)

    half = await mesh_client.call("mailer", "m", {"op": "approve", "id": to_a["id"], "by": "ann"})
    assert half["status"] == "awaiting_approval" and [a["id"] for a in half["approvals"]] == [to_b["id"]]
    assert sent == []  # nothing runs until every approval of the run is decided

    done = await mesh_client.call("mailer", "m", {"op": "reject", "id": to_b["id"], "by": "ben", "reason": "spam"})
    assert done["status"] == "completed" and done["output"] == "Sent one, the other was refused."
    assert sent == ["a@example.com"]
    outputs = {
        i["call_id"]: i["output"]
        for i in Mailer.model.last_call.input
        if isinstance(i, dict) and i.get("type") == "function_call_output"
    }
    assert outputs["c1"] == "sent to a@example.com"
    assert outputs["c2"] == "The tool call was rejected by ben (reason: spam). The tool did not run."
    Mailer.model.assert_complete()
    state = await mesh_client.state("mailer", "m")
    assert state["requests"] == 2 and state["pending"] == []
    kinds: list[str] = []
    async with asyncio.timeout(10):
        while "run_completed" not in kinds:
            kinds.append((await events.next_msg(timeout=10)).subject.rsplit(".", 1)[1])
    assert kinds.count("tool_called") == 2 and kinds.count("approval_requested") == 2
    assert kinds.count("approval_decided") == 2 and kinds.count("tool_output") == 2
    assert kinds.index("approval_requested") < kinds.index("approval_decided") < kinds.index("tool_output")


async def test_a_paused_run_whose_snapshot_is_gone_is_settled_as_failed_not_left_pending(
    mesh_factory: Any, mesh_client: MeshClient
) -> None:
    Mailer.model = ScriptedModel([[function_call("send_email", {"to": "c@example.com", "body": "x"}, call_id="c3")]])
    sent.clear()
    await mesh_factory([Mailer])
    paused = await mesh_client.call("mailer", "lost", "mail c")
    runs = await RunStore.open(mesh_client.nc.jetstream())
    await runs.delete(subjects.instance_key("mailer", "lost"), paused["run_id"])

    reply = await mesh_client.call("mailer", "lost", {"op": "approve", "id": paused["approvals"][0]["id"]})
    assert reply["status"] == "failed" and "no stored snapshot" in reply["output"]
    assert sent == []
    state = await mesh_client.state("mailer", "lost")
    assert state["pending"] == [] and state["runs"][-1]["status"] == "failed"
