"""The SMTP ingestion service end to end: smtplib in, a real nats-server, an aiosmtpd sink as the relay."""

from __future__ import annotations

import asyncio

from mail_support import Inbox, Notes, Sink, compose, send

from mesh.client import MeshClient
from mesh.testing import eventually
from services.mail.routing import agent_address


async def wait_state(client: MeshClient, agent_type: str, name: str, check):  # type: ignore[no-untyped-def]
    async def reached() -> dict:
        state = await client.state(agent_type, name)
        assert state is not None and check(state), state
        return state

    return await eventually(reached, timeout=20)


async def test_a_mail_becomes_a_request_and_the_answer_a_threaded_reply(mesh_factory, mesh_client, mail_factory, sink):
    """Done when 1 (mechanics with a plain stateful agent): reply in thread; the reply to it reaches the same instance."""
    await mesh_factory([Notes])
    service = await mail_factory()
    first = compose(subject="Capital?", body="What is the capital of France?", message_id="<q1@example.com>")
    code, reply = await send(service.port, first)
    assert code == 250, reply
    (answer,) = await sink.wait_for(1)
    envelope = sink.received[0][0]
    assert envelope.rcpt_tos == ["alice@example.com"]
    assert answer["Subject"] == "Re: Capital?"
    assert answer["In-Reply-To"] == "<q1@example.com>"
    assert answer["References"] == "<q1@example.com>"
    assert answer["Auto-Submitted"] == "auto-replied"
    assert answer["From"].addresses[0].addr_spec == "notes+alice@localhost"
    assert answer["Message-ID"].endswith("@localhost>")
    assert answer.get_content().strip() == "Noted #1: What is the capital of France?"

    # The person replies to the reply from their mail client: quoted text and all.
    second = compose(
        to=str(answer["From"].addresses[0].addr_spec),
        subject=str(answer["Subject"]),
        body=f"And of Italy?\n\nOn Thu, 26 Nov 2026, Notes wrote:\n> {answer.get_content().strip()}\n",
        message_id="<q2@example.com>",
        headers={"In-Reply-To": answer["Message-ID"], "References": f"<q1@example.com> {answer['Message-ID']}"},
    )
    code, _ = await send(service.port, second)
    assert code == 250
    _, again = await sink.wait_for(2)
    assert again["Subject"] == "Re: Capital?"
    assert again["In-Reply-To"] == "<q2@example.com>"
    assert again["References"].split() == ["<q1@example.com>", answer["Message-ID"], "<q2@example.com>"]
    assert again.get_content().strip() == "Noted #2: And of Italy?"
    state = await mesh_client.state("notes", "alice")
    assert state == {"messages": ["What is the capital of France?", "And of Italy?"]}


async def test_type_only_address_reaches_the_instance_named_after_the_sender(mesh_factory, mesh_client, mail_factory, sink):
    await mesh_factory([Notes])
    service = await mail_factory()
    code, _ = await send(service.port, compose(to="notes@localhost", body="remember me"), sender="Bob@Example.com")
    assert code == 250
    (answer,) = await sink.wait_for(1)
    assert answer["From"].addresses[0].addr_spec == agent_address("notes", "bob@example.com", "localhost")
    assert await mesh_client.state("notes", "bob@example.com") == {"messages": ["remember me"]}


async def test_on_email_hook_gets_the_parsed_mail(mesh_factory, mesh_client, mail_factory, sink):
    await mesh_factory([Inbox])
    service = await mail_factory(trusted_authserv=("mx.localhost",))
    message = compose(
        to="inbox+desk@localhost",
        subject="Report",
        body="Please answer.\n\n> old quoted text",
        headers={
            "Authentication-Results": "mx.localhost; spf=pass smtp.mailfrom=example.com; "
            "dkim=pass header.d=example.com; dmarc=pass"
        },
    )
    message.add_attachment(b"%PDF-1.4 tiny", maintype="application", subtype="pdf", filename="r.pdf")
    code, _ = await send(service.port, message)
    assert code == 250
    (answer,) = await sink.wait_for(1)
    assert answer.get_content().strip() == "Got 'Report' from alice@example.com with 1 attachment(s)."
    (mail,) = (await mesh_client.state("inbox", "desk"))["mails"]
    assert mail["text"] == "Please answer."
    assert mail["recipients"] == ["inbox+desk@localhost"]
    assert mail["attachments"] == [{"filename": "r.pdf", "content_type": "application/pdf", "size": 13, "content_id": None}]
    assert mail["auth"]["verdict"] == "pass" and mail["auth"]["authserv_id"] == "mx.localhost"
    assert mail["automatic"] is False


async def test_the_same_message_id_twice_is_processed_once(mesh_factory, mesh_client, mail_factory, sink):
    """Done when 2; also when the second copy comes after the stream's duplicate window (KV record)."""
    await mesh_factory([Notes])
    service = await mail_factory()
    message = compose(body="only once", message_id="<dup@example.com>")
    assert (await send(service.port, message))[0] == 250
    assert (await send(service.port, message))[0] == 250
    await sink.wait_for(1)
    # A third copy to the same instance that JetStream cannot dedupe (another envelope recipient list):
    assert (await send(service.port, message, rcpts=["notes+alice@localhost", "notes+carol@localhost"]))[0] == 250
    await sink.wait_for(2)  # carol answers; alice must not answer again
    await asyncio.sleep(0.5)
    assert len(sink.received) == 2
    assert await mesh_client.state("notes", "alice") == {"messages": ["only once"]}
    assert await mesh_client.state("notes", "carol") == {"messages": ["only once"]}


async def test_unknown_agent_or_domain_is_refused_at_rcpt(mail_factory):
    """Done when 4 (RCPT)."""
    service = await mail_factory()
    for rcpt in (
        "nobody+x@localhost",
        "notes+alice@example.org",
        "1bad+x@localhost",
        "notes+" + "n" * 300 + "@localhost",
        "postmaster@localhost",
    ):
        code, reply = await send(service.port, compose(to="x@y"), rcpts=[rcpt])
        assert code == 550 and reply.startswith(b"5.1.1"), (rcpt, code, reply)
    assert (await send(service.port, compose(to="x@y"), rcpts=["Notes+A@LocalHost"]))[0] == 250  # case-insensitive
    assert service.handler.accepted == 1


async def test_mail_over_the_size_limit_gets_552(mail_factory):
    service = await mail_factory(max_bytes=4096)
    code, reply = await send(service.port, compose(body=("x" * 70 + "\n") * 150))
    assert code == 552, reply
    assert (await send(service.port, compose(body="small")))[0] == 250  # the server keeps serving


async def test_too_many_recipients_get_452(mail_factory):
    service = await mail_factory(max_recipients=2)
    code, reply = await send(service.port, compose(), rcpts=["notes+a@localhost", "notes+b@localhost", "notes+c@localhost"])
    assert code == 452, reply


async def test_nats_down_means_451_and_the_sender_retries_later(nats_server, mesh_factory, mesh_client, mail_factory, sink):
    """Done when 4 (451): nothing is acknowledged that is not stored."""
    await mesh_factory([Notes])
    service = await mail_factory()
    nats_server.stop()
    code, reply = await send(service.port, compose(body="while down", message_id="<down@example.com>"))
    assert code == 451, reply
    await nats_server.start()

    async def stored() -> bool:  # the sender's retry, once nats-server is back
        code, reply = await send(service.port, compose(body="while down", message_id="<down@example.com>"))
        assert code in (250, 451), reply
        return code == 250

    await eventually(stored, timeout=20, interval=0.2)
    (answer,) = await sink.wait_for(1, timeout=30)
    assert answer.get_content().strip() == "Noted #1: while down"


async def test_large_mail_goes_through_the_object_store(mesh_factory, mesh_client, mail_factory, sink):
    await mesh_factory([Inbox])
    service = await mail_factory(stream_limit=8 * 1024)
    message = compose(to="inbox+big@localhost", subject="Big", body="please answer")
    message.add_attachment(bytes(range(256)) * 1024, maintype="application", subtype="octet-stream", filename="b.bin")
    assert (await send(service.port, message))[0] == 250
    (answer,) = await sink.wait_for(1)
    assert "1 attachment(s)" in answer.get_content()
    (mail,) = (await mesh_client.state("inbox", "big"))["mails"]
    assert mail["attachments"][0]["size"] == 256 * 1024


async def test_automatic_mail_is_delivered_but_never_answered(mesh_factory, mesh_client, mail_factory, sink):
    """Done when 5: an auto-reply, a mailing-list message and a bounce reach the agent and get no reply."""
    await mesh_factory([Inbox])
    service = await mail_factory()
    auto = compose(
        to="inbox+desk@localhost",
        subject="Out of office",
        body="please answer: I am away",
        headers={"Auto-Submitted": "auto-replied"},
    )
    listmail = compose(
        to="inbox+desk@localhost",
        subject="[dev] digest",
        body="please answer the list",
        headers={"List-Id": "<dev.lists.example.com>", "Precedence": "list"},
    )
    bounce = compose(
        sender="MAILER-DAEMON@example.com",
        to="inbox+desk@localhost",
        subject="Undelivered Mail",
        body="please answer: delivery failed",
    )
    bounce.replace_header("Content-Type", 'multipart/report; report-type=delivery-status; boundary="b"')
    bounce.set_payload(
        "--b\nContent-Type: text/plain\n\nplease answer: delivery failed\n--b\n"
        "Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n--b--\n"
    )
    suppress = compose(
        to="inbox+desk@localhost", subject="Calendar", body="please answer", headers={"X-Auto-Response-Suppress": "All"}
    )
    assert (await send(service.port, auto))[0] == 250
    assert (await send(service.port, listmail))[0] == 250
    assert (await send(service.port, bounce, sender=""))[0] == 250
    assert (await send(service.port, suppress))[0] == 250
    state = await wait_state(mesh_client, "inbox", "desk", lambda s: len(s["mails"]) == 4)
    reasons = sorted(m["automatic_reason"] for m in state["mails"])
    assert all(m["automatic"] for m in state["mails"])
    assert reasons == ["auto-submitted: auto-replied", "null sender", "precedence: list", "x-auto-response-suppress: all"]
    # A normal mail after them is answered, and it is the only message at the sink.
    assert (await send(service.port, compose(to="inbox+desk@localhost", body="please answer")))[0] == 250
    await sink.wait_for(1)
    await asyncio.sleep(0.5)
    assert len(sink.received) == 1


async def test_replies_are_rate_limited_per_sender(mesh_factory, mesh_client, mail_factory, sink):
    await mesh_factory([Notes])
    service = await mail_factory(reply_limit=2)
    for i in range(4):
        assert (await send(service.port, compose(body=f"note {i}")))[0] == 250
    assert (await send(service.port, compose(to="notes@localhost", body="other sender"), sender="dora@example.com"))[0] == 250
    await wait_state(mesh_client, "notes", "alice", lambda s: len(s["messages"]) == 4)
    await wait_state(mesh_client, "notes", "dora@example.com", lambda s: len(s["messages"]) == 1)
    await sink.wait_for(3)
    await asyncio.sleep(0.5)
    assert sorted(e.rcpt_tos[0] for e, _ in sink.received) == ["alice@example.com", "alice@example.com", "dora@example.com"]


async def test_agent_errors_are_answered_once_not_retried_forever(mesh_factory, mesh_client, mail_factory, sink):
    await mesh_factory([Notes])
    service = await mail_factory()
    assert (await send(service.port, compose(body="fail")))[0] == 250
    (answer,) = await sink.wait_for(1)
    assert "could not be handled (handler_error)" in answer.get_content()
    assert "cannot note that" in answer.get_content()


async def test_relay_4xx_is_retried_and_5xx_recorded_as_failed(mesh_factory, mail_factory, sink: Sink):
    await mesh_factory([Notes])
    service = await mail_factory()
    sink.answer = "451 4.3.0 try later"
    assert (await send(service.port, compose(body="retry me")))[0] == 250
    await eventually(lambda: _records_with(service, "out", "retrying"), timeout=20)
    sink.answer = "250 OK"
    (answer,) = await sink.wait_for(1)
    assert answer.get_content().strip() == "Noted #1: retry me"
    sink.answer = "550 5.1.1 no such user"
    assert (await send(service.port, compose(body="fail me")))[0] == 250
    (failed,) = await eventually(lambda: _records_with(service, "out", "failed"), timeout=20)
    assert failed["error"].startswith("550")


async def _records_with(service, kind: str, status: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [e for e in await _records(service, kind) if e.get("status") == status]


async def _records(service, kind: str) -> list[dict]:  # type: ignore[no-untyped-def]
    import json

    import nats.js.errors

    kv = await service.nc.jetstream().key_value("mesh_mail")
    found = []
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    for key in keys:
        if key.startswith(kind + "."):
            entry = await kv.get(key)
            found.append(json.loads(entry.value))
    return found


async def test_without_an_allowlist_mail_reaches_the_types_the_mesh_serves(mesh_factory, mesh_client, mail_factory, sink):
    from services.demo import Counter

    await mesh_factory([Notes, Counter])
    service = await mail_factory(agent_types=())
    assert (await send(service.port, compose(body="served"), rcpts=["notes+alice@localhost"]))[0] == 250
    assert (await send(service.port, compose(body="x"), rcpts=["inbox+alice@localhost"]))[0] == 550  # not served
    # A type whose requests are not text gets a clear failure notice, not silence and not retries.
    assert (await send(service.port, compose(body="add one"), rcpts=["counter+c@localhost"]))[0] == 250
    messages = await sink.wait_for(2)
    texts = sorted(m.get_content().strip() for m in messages)
    assert texts[0] == "Noted #1: served"
    assert "(schema_mismatch)" in texts[1] and "takes no plain-text requests" in texts[1]
    assert await mesh_client.state("counter", "c") is None


async def test_copies_of_one_message_arriving_together_are_processed_once(mesh_factory, mesh_client, mail_factory, sink):
    """Several envelopes carry the same Message-ID to one instance (a list, Cc and Bcc): one turn, one reply."""
    await mesh_factory([Notes])
    service = await mail_factory()
    message = compose(body="one of many", message_id="<many@example.com>")
    rcpt_lists = [
        ["notes+alice@localhost"],
        ["notes+alice@localhost", "notes+x@localhost"],
        ["notes+alice@localhost", "notes+y@localhost"],
        ["NOTES+alice@localhost", "notes+z@localhost"],
    ]
    codes = await asyncio.gather(*(send(service.port, message, rcpts=r) for r in rcpt_lists))
    assert [c for c, _ in codes] == [250] * 4
    await sink.wait_for(4)  # alice once, x, y, z
    await asyncio.sleep(0.5)
    assert sorted(m["From"].addresses[0].addr_spec for m in (msg for _, msg in sink.received)) == [
        "notes+alice@localhost",
        "notes+x@localhost",
        "notes+y@localhost",
        "notes+z@localhost",
    ]
    assert await mesh_client.state("notes", "alice") == {"messages": ["one of many"]}


async def test_routing_is_pluggable(mesh_factory, mesh_client, mail_factory, sink):
    """A resolver like Cloudflare's: here `support@` reaches one shared instance, and the default rules still apply."""
    from services.mail.routing import Route, address_resolver

    default = address_resolver(("localhost",))

    def resolve(address: str) -> Route | None:
        if address.lower() == "support@localhost":
            return Route("notes", "helpdesk")
        return default(address)

    await mesh_factory([Notes])
    service = await mail_factory(resolver=resolve)
    assert (await send(service.port, compose(body="printer on fire"), rcpts=["support@localhost"]))[0] == 250
    assert (await send(service.port, compose(body="direct"), rcpts=["notes+bob@localhost"]))[0] == 250
    assert (await send(service.port, compose(body="x"), rcpts=["sales@localhost"]))[0] == 550
    await sink.wait_for(2)
    assert await mesh_client.state("notes", "helpdesk") == {"messages": ["printer on fire"]}
    assert await mesh_client.state("notes", "bob") == {"messages": ["direct"]}
