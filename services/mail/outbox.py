"""Replies leave through a durable outbox: stored in JetStream first, then sent to the relay.

A reply is enqueued (stream `mesh_mail_out`, deduplicated by the id of the mail it answers) before
the inbound mail is acknowledged, so a crash never loses it. The sender loop delivers it through the
configured relay with aiosmtplib: a 4xx answer or a connection failure is retried with growing
delays, a 5xx answer is final; either outcome is recorded under `out.<id>` in the KV bucket.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import aiosmtplib
import structlog

from mesh import subjects
from mesh.bus import AckPolicy, ConsumerConfig, Message, store
from mesh.errors import ConnectionFailed
from mesh.mail import InboundEmail
from services.mail.config import MailConfig
from services.mail.store import MailEnvelope, MailStore, pull_subscription, short_hash

MAX_ATTEMPTS = 12
RETRY_DELAYS = (1.0, 5.0, 30.0, 120.0, 600.0, 1800.0)

log = structlog.get_logger("mesh.mail")


@dataclass(frozen=True)
class Reply:
    """An outgoing message and its envelope."""

    message: EmailMessage
    sender: str
    recipients: list[str]

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"]).strip("<>")


def reply_subject(subject: str) -> str:
    subject = subject.strip()
    return subject if subject.lower().startswith("re:") else f"Re: {subject}" if subject else "Re: your message"


def build_reply(mail: InboundEmail, *, from_address: str, from_name: str, text: str, domain: str) -> Reply:
    """A reply in the mail's thread (RFC 5322 3.6.4) marked as automatic (RFC 3834)."""
    message = EmailMessage()
    message["From"] = f"{from_name} <{from_address}>"
    message["To"] = mail.sender
    message["Subject"] = reply_subject(mail.subject)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=domain)
    if mail.message_id:
        message["In-Reply-To"] = f"<{mail.message_id}>"
        message["References"] = " ".join(f"<{m}>" for m in [*mail.references, mail.message_id][-20:])
    message["Auto-Submitted"] = "auto-replied"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(text)
    return Reply(message, from_address, [mail.sender])


def new_message(
    *,
    from_address: str,
    from_name: str,
    to: str,
    subject: str,
    text: str,
    domain: str,
    in_reply_to: str | None = None,
    references: list[str] | None = None,
) -> Reply:
    """A mail the mesh starts (an approval request), optionally inside an existing thread."""
    message = EmailMessage()
    message["From"] = f"{from_name} <{from_address}>"
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=domain)
    if in_reply_to:
        message["In-Reply-To"] = f"<{in_reply_to}>"
        message["References"] = " ".join(f"<{m}>" for m in [*(references or []), in_reply_to][-20:])
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    return Reply(message, from_address, [to])


def reply_text(result: Any) -> str | None:
    """The text of an agent's answer: a string, an LLM reply's output, `{"text": ...}`, or pretty JSON."""
    if result is None:
        return None
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        if result.get("status") == "awaiting_approval":
            return (
                "Your request needs a person's approval before it can continue. "
                "You will get the answer by mail once it is decided."
            )
        if "output" in result and "run_id" in result:
            output = result["output"]
            return output if isinstance(output, str) else json.dumps(output, indent=2, ensure_ascii=False)
        if isinstance(result.get("text"), str):
            return str(result["text"])
    return json.dumps(result, indent=2, ensure_ascii=False)


class Outbox:
    """Enqueue replies durably; `serve_sending` delivers them through the relay."""

    def __init__(self, store: MailStore, config: MailConfig) -> None:
        self.store = store
        self.config = config

    async def enqueue(self, reply: Reply, dedupe_id: str) -> None:
        envelope = MailEnvelope(mail_id=reply.message_id, mail_from=reply.sender, rcpt_tos=reply.recipients)
        await store(
            self.store.js,
            subjects.MAIL_OUTBOX_SUBJECT,
            reply.message.as_bytes(),
            stream=subjects.MAIL_OUTBOX_STREAM,
            headers={subjects.HEADER_MAIL_ENVELOPE: envelope.header(), subjects.HEADER_NATS_MSG_ID: dedupe_id},
        )
        await self.store.put_record(
            "out",
            _key(reply.message_id),
            {
                "status": "queued",
                "to": reply.recipients,
                "message_id": reply.message_id,
                "at": time.time(),
            },
        )
        log.info("mail.reply_queued", message_id=reply.message_id, to=reply.recipients)

    async def serve_sending(self) -> None:
        """Deliver queued replies forever (one at a time: replies are few and relays like it that way)."""
        sub = await pull_subscription(
            self.store.js,
            subjects.MAIL_OUTBOX_SUBJECT,
            subjects.MAIL_OUTBOX_STREAM,
            "mesh_mail_sender",
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=120.0, max_deliver=-1),
        )
        while True:
            try:
                msgs = await sub.fetch(1, timeout=5.0)
            except ConnectionFailed:
                return
            except Exception as exc:  # NATS reconnecting; try again shortly
                log.warning("mail.outbox_fetch_failed", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await self._send(msg)

    async def _send(self, msg: Message) -> None:
        envelope = MailEnvelope.from_header((msg.headers or {})[subjects.HEADER_MAIL_ENVELOPE])
        attempt = msg.metadata.num_delivered or 1
        record = {"to": envelope.rcpt_tos, "message_id": envelope.mail_id, "attempts": attempt, "at": time.time()}
        assert self.config.relay is not None
        host, port = self.config.relay
        try:
            await aiosmtplib.send(
                msg.data,
                sender=envelope.mail_from,
                recipients=envelope.rcpt_tos,
                hostname=host,
                port=port,
                username=self.config.relay_user,
                password=self.config.relay_password,
                start_tls=self.config.relay_starttls,
                use_tls=False,
                timeout=60,
            )
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as exc:
            code = _code(exc)
            if code >= 500:
                await self.store.put_record(
                    "out", _key(envelope.mail_id), {**record, "status": "failed", "error": f"{code} {exc}"[:500]}
                )
                await msg.term()
                log.warning("mail.reply_failed", message_id=envelope.mail_id, code=code, error=str(exc)[:300])
                return
            await self._retry(msg, envelope, record, f"{code} {exc}")
            return
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self._retry(msg, envelope, record, f"{type(exc).__name__}: {exc}")
            return
        await self.store.put_record("out", _key(envelope.mail_id), {**record, "status": "sent"})
        await msg.ack()
        log.info("mail.reply_sent", message_id=envelope.mail_id, to=envelope.rcpt_tos, relay=f"{host}:{port}")

    async def _retry(self, msg: Message, envelope: MailEnvelope, record: dict[str, object], error: str) -> None:
        attempt = int(record["attempts"])  # type: ignore[call-overload]
        if attempt >= MAX_ATTEMPTS:
            await self.store.put_record("out", _key(envelope.mail_id), {**record, "status": "failed", "error": error[:500]})
            await msg.term()
            log.warning("mail.reply_failed", message_id=envelope.mail_id, attempts=attempt, error=error[:300])
            return
        delay = RETRY_DELAYS[min(attempt - 1, len(RETRY_DELAYS) - 1)]
        await self.store.put_record("out", _key(envelope.mail_id), {**record, "status": "retrying", "error": error[:500]})
        await msg.nak(delay=delay)
        log.info("mail.reply_deferred", message_id=envelope.mail_id, attempt=attempt, retry_in=delay, error=error[:300])


def _code(exc: Exception) -> int:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [getattr(r, "code", 550) for r in exc.recipients]
        return min(codes) if codes else 550
    return int(getattr(exc, "code", 451))


def _key(message_id: str) -> str:
    return short_hash(message_id)
