"""Shared parts of the mail tests: test agents, an aiosmtpd sink as the relay, smtplib senders."""

from __future__ import annotations

import asyncio
import email
import re
import smtplib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest_asyncio
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import BaseModel

from mesh import Agent, bus
from mesh.bus import NatsServer, free_port
from mesh.mail import InboundEmail
from services.mail.config import MailConfig
from services.mail.routing import Resolver
from services.mail.service import MailService


class NotesState(BaseModel):
    messages: list[str] = []


class Notes(Agent[NotesState]):
    """A plain agent that takes text (like an LLM agent's user message) and remembers every exchange."""

    type = "notes"

    async def on_request(self, text: str) -> str:
        if text.strip() == "fail":
            raise ValueError("cannot note that")
        self.state.messages.append(text)
        return f"Noted #{len(self.state.messages)}: {text}"


class InboxState(BaseModel):
    mails: list[dict[str, Any]] = []


class Inbox(Agent[InboxState]):
    """An agent with its own `on_email`: it keeps what it was sent and answers only when asked to."""

    type = "inbox"

    async def on_email(self, mail: InboundEmail) -> Any:
        self.state.mails.append(mail.model_dump(mode="json"))
        if "please answer" in mail.text.lower():
            return f"Got {mail.subject!r} from {mail.from_address} with {len(mail.attachments)} attachment(s)."
        return None

    async def on_request(self, request: Any) -> Any:
        return {"mails": len(self.state.mails)}


@dataclass
class Sink:
    """An aiosmtpd server standing in for the relay; it keeps every message it is given."""

    port: int = 0
    received: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    answer: str = "250 OK"
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        if self.answer.startswith("250"):
            message = email.message_from_bytes(envelope.content, policy=policy.default)
            async with self.arrived:
                self.received.append((envelope, message))  # type: ignore[arg-type]
                self.arrived.notify_all()
        return self.answer

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[EmailMessage]:
        async with asyncio.timeout(timeout):
            async with self.arrived:
                await self.arrived.wait_for(lambda: len(self.received) >= count)
        return [m for _, m in self.received]


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[Sink]:
    relay = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(relay, hostname="sink.test"), "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    try:
        yield relay
    finally:
        server.close()


MailFactory = Callable[..., Awaitable[MailService]]


@pytest_asyncio.fixture
async def mail_factory(nats_server: NatsServer, sink: Sink) -> AsyncIterator[MailFactory]:
    """Start in-process mail services on their own connections, relaying to the sink."""
    started: list[MailService] = []

    async def start(resolver: Resolver | None = None, **overrides: Any) -> MailService:
        base = MailConfig(
            port=free_port(),
            relay=("127.0.0.1", sink.port),
            agent_types=("notes", "inbox"),
            ack_wait=5.0,
            store_timeout=1.0,
            call_timeout=20.0,
        )
        nc = await bus.connect(bus.NatsOptions.from_url(nats_server.url, name="mesh-test-mail"))
        service = MailService(nc, replace(base, **overrides), resolver=resolver)
        await service.start()
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in reversed(started):
            await service.stop()
            await service.nc.close()


def compose(
    *,
    sender: str = "alice@example.com",
    to: str = "notes+alice@localhost",
    subject: str = "Hello",
    body: str = "hi",
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id or email.utils.make_msgid(domain="example.com")
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message


async def send(
    port: int, message: EmailMessage | bytes, *, sender: str = "alice@example.com", rcpts: list[str] | None = None
) -> tuple[int, bytes]:
    """Send with the standard library's smtplib (in a thread: it blocks); returns the DATA reply."""
    data = message if isinstance(message, bytes) else message.as_bytes()
    data = re.sub(rb"(?<!\r)\n", b"\r\n", data)  # SMTP lines end in CRLF; smtplib leaves bytes as they are
    recipients = rcpts or ([str(message["To"])] if isinstance(message, EmailMessage) else [])

    def run() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.test")
            code, reply = client.mail(sender)
            if code != 250:
                return code, reply
            for rcpt in recipients:
                code, reply = client.rcpt(rcpt)
                if code not in (250, 251):
                    return code, reply
            return client.data(data)

    return await asyncio.to_thread(run)
