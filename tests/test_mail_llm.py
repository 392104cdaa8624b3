"""Mail to LLM agents (issue 3's triage demo on the offline demo model): answers, memory, approval by mail."""

from __future__ import annotations

import asyncio
import json
from email.message import EmailMessage

from mail_support import MailFactory, Sink, compose, send

from mesh.bus import NatsServer
from mesh.client import MeshClient
from mesh.memory import MemorySession
from mesh.testing import WorkerFactory, eventually
from services.mail.routing import sign_token

OFFLINE = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "MESH_MODEL": ""}


def reply_to(answer: EmailMessage, body: str, message_id: str, sender: str = "alice@example.com") -> EmailMessage:
    """What a mail client sends when the person presses Reply: same thread, quoted text below."""
    quoted = "\n".join(f"> {line}" for line in answer.get_content().splitlines())
    return compose(
        sender=sender,
        to=answer["From"].addresses[0].addr_spec,
        subject=str(answer["Subject"]),
        body=f"{body}\n\nOn Thu, 26 Nov 2026 at 10:00, {answer['From']} wrote:\n{quoted}\n",
        message_id=message_id,
        headers={"In-Reply-To": answer["Message-ID"], "References": f"{answer.get('References', '')} {answer['Message-ID']}"},
    )


async def test_mail_to_triage_gets_the_history_tutor_in_thread_and_the_reply_reaches_the_same_memory(
    nats_server: NatsServer,
    mesh_client: MeshClient,
    worker_factory: WorkerFactory,
    mail_factory: MailFactory,
    sink: Sink,
) -> None:
    """Done when 1."""
    await worker_factory(nats_server.url, app="services.demo", env=OFFLINE)
    service = await mail_factory(agent_types=("triage",), call_timeout=60.0)
    question = compose(
        to="triage+alice@localhost",
        subject="A question",
        message_id="<france@example.com>",
        body="What is the capital of France?\n\n-- \nAlice",
    )
    assert (await send(service.port, question))[0] == 250
    (answer,) = await sink.wait_for(1, timeout=60)
    assert answer.get_content().strip().endswith("History Tutor: the capital of France is Paris.")  # offline model
    assert answer["Subject"] == "Re: A question"
    assert answer["In-Reply-To"] == "<france@example.com>"
    assert answer["From"].addresses[0].addr_spec == "triage+alice@localhost"

    assert (await send(service.port, reply_to(answer, "And what is the capital of Italy?", "<italy@example.com>")))[0] == 250
    _, second = await sink.wait_for(2, timeout=60)
    assert second.get_content().strip().endswith("History Tutor: the capital of Italy is Rome.")
    assert second["In-Reply-To"] == "<italy@example.com>"
    assert second["References"].split() == ["<france@example.com>", answer["Message-ID"], "<italy@example.com>"]

    items = await MemorySession(mesh_client.nc, "triage", "alice").get_items()
    said = [str(i.get("content")) for i in items if i.get("role") == "user"]
    assert said == ["What is the capital of France?", "And what is the capital of Italy?"]  # quotes stripped
    text = json.dumps(items)
    assert "the capital of France is Paris" in text and "the capital of Italy is Rome" in text


async def test_a_pending_approval_is_decided_by_the_approvers_reply(
    nats_server: NatsServer,
    mesh_client: MeshClient,
    worker_factory: WorkerFactory,
    mail_factory: MailFactory,
    sink: Sink,
) -> None:
    await worker_factory(nats_server.url, app="services.demo", env=OFFLINE)
    service = await mail_factory(
        agent_types=("clerk",), approvers=("boss@example.com",), secret=b"test-secret", call_timeout=60.0
    )
    ask = compose(to="clerk+desk@localhost", subject="Counter", body="add 5 to counter t1", message_id="<ask@example.com>")
    assert (await send(service.port, ask))[0] == 250
    messages = await sink.wait_for(2, timeout=60)
    by_rcpt = {env.rcpt_tos[0]: msg for env, msg in sink.received}
    assert set(by_rcpt) == {"alice@example.com", "boss@example.com"} and len(messages) == 2
    assert "needs a person's approval" in by_rcpt["alice@example.com"].get_content()
    request = by_rcpt["boss@example.com"]
    assert "add_to_counter" in request.get_content() and "add 5 to counter t1" in request.get_content()
    signed = request["From"].addresses[0].addr_spec
    assert signed.startswith("clerk+desk+t") and signed.endswith("@localhost")

    # Neither a stranger nor a forged token can decide it; nobody gets an answer for trying.
    forged = sign_token(b"wrong-secret", "clerk", "desk", signed.split("+t", 1)[1].split("-")[0])
    attempts = [
        (reply_to(request, "approve", "<m1@evil.test>", sender="mallory@evil.test"), "mallory@evil.test", signed),
        (
            reply_to(request, "approve", "<m2@example.com>", sender="boss@example.com"),
            "boss@example.com",
            f"clerk+desk+{forged}@localhost",
        ),
        (reply_to(request, "looks fine to me", "<m3@example.com>", sender="boss@example.com"), "boss@example.com", signed),
    ]
    for message, sender, rcpt in attempts:
        assert (await send(service.port, message, sender=sender, rcpts=[rcpt]))[0] == 250
    await eventually(lambda: service.handler.accepted >= 4, timeout=30)
    await asyncio.sleep(1.0)
    assert len(sink.received) == 2
    assert await mesh_client.state("counter", "t1") is None

    approve = reply_to(request, "Approve\n\nthanks", "<ok@example.com>", sender="boss@example.com")
    assert (await send(service.port, approve, sender="boss@example.com", rcpts=[signed]))[0] == 250
    await sink.wait_for(4, timeout=60)
    later = {env.rcpt_tos[0]: msg for env, msg in sink.received[2:]}
    assert await mesh_client.state("counter", "t1") == {"value": 5}  # the tool ran, once
    assert later["boss@example.com"]["In-Reply-To"] == "<ok@example.com>"
    assert "Recorded: approved" in later["boss@example.com"].get_content()
    outcome = later["alice@example.com"]
    assert outcome["In-Reply-To"] == "<ask@example.com>" and outcome["Subject"] == "Re: Counter"
    assert "Clerk: done" in outcome.get_content()
    state = await mesh_client.state("clerk", "desk")
    assert state["decisions"][-1]["decision"] == "approve" and state["decisions"][-1]["by"] == "boss@example.com"
