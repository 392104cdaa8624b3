"""The SMTP front: aiosmtpd sessions that route at RCPT and store at DATA before saying 250.

Replies the sender sees:

    250 2.1.5  recipient accepted            550 5.1.1  no such agent, or a domain not ours
    452 4.5.3  too many recipients           451 4.3.0  storage (or agent discovery) unavailable
    250 2.0.0  stored (id)                   552 5.3.4  over the size limit (aiosmtpd, from SIZE or DATA)
    554 5.6.0  not a mail message
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from services.mail.config import MailConfig
from services.mail.metrics import MAIL_MESSAGES
from services.mail.parse import Unparseable, accept_check
from services.mail.routing import Resolver
from services.mail.store import MailEnvelope, MailStore, StoreUnavailable, message_key, short_hash

log = structlog.get_logger("mesh.mail")

INLINE_PARSE_LIMIT = 64 * 1024
"""Larger mail is parsed in a worker thread."""

TypeCheck = Callable[[str], Awaitable[bool]]
"""Is mail allowed to reach this agent type? (raises to answer 451: cannot tell now)"""


class IngestHandler:
    """aiosmtpd handler: routing at RCPT, durable acceptance at DATA."""

    def __init__(self, config: MailConfig, store: MailStore, resolver: Resolver, type_allowed: TypeCheck) -> None:
        self.config = config
        self.store = store
        self.resolver = resolver
        self.type_allowed = type_allowed
        self.accepted = 0

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            MAIL_MESSAGES.labels("rejected", "too_many_recipients").inc()
            return "452 4.5.3 Too many recipients"
        route = self.resolver(address)
        try:
            allowed = route is not None and await self.type_allowed(route.agent_type)
        except Exception as exc:
            log.warning("mail.rcpt_deferred", rcpt=address, error=str(exc) or type(exc).__name__)
            MAIL_MESSAGES.labels("deferred", "discovery_unavailable").inc()
            return "451 4.3.0 Cannot check the recipient now; try again later"
        if not allowed:
            log.info("mail.rejected", stage="rcpt", rcpt=address[:200], peer=_peer(session))
            MAIL_MESSAGES.labels("rejected", "no_such_agent").inc()
            return f"550 5.1.1 <{address[:200]}>: no such agent here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        raw = envelope.original_content if isinstance(envelope.original_content, bytes) else envelope.content
        if not isinstance(raw, bytes):
            raw = str(raw or "").encode("utf-8", "surrogateescape")
        sender = envelope.mail_from or ""
        if sender == "<>":
            sender = ""
        recipients = list(envelope.rcpt_tos)
        try:
            if len(raw) > INLINE_PARSE_LIMIT:  # keep the event loop (and NATS heartbeats) responsive
                message_id = await asyncio.to_thread(accept_check, raw)
            else:
                message_id = accept_check(raw)
        except Unparseable as exc:
            log.info("mail.rejected", stage="data", reason=str(exc), peer=_peer(session))
            MAIL_MESSAGES.labels("rejected", "unparseable").inc()
            return f"554 5.6.0 Message refused: {exc}"
        except Exception as exc:  # never let a parser bug end the session
            log.error("mail.parse_failed", exc_info=exc, peer=_peer(session))
            MAIL_MESSAGES.labels("rejected", "parser_error").inc()
            return "554 5.6.0 Message refused: it could not be parsed"
        dedupe_id = short_hash(message_key(message_id, raw), *sorted(r.lower() for r in recipients))
        mail_id = dedupe_id[:32]
        stored = MailEnvelope(mail_id=mail_id, mail_from=sender, rcpt_tos=recipients, peer=_peer(session), received=time.time())
        try:
            duplicate = await self.store.accept(raw, stored, dedupe_id)
        except StoreUnavailable as exc:
            log.warning("mail.deferred", stage="data", mail_id=mail_id, error=str(exc)[:300])
            MAIL_MESSAGES.labels("deferred", "storage_unavailable").inc()
            return "451 4.3.0 Mail storage is unavailable; try again later"
        self.accepted += 1
        MAIL_MESSAGES.labels("accepted", "duplicate" if duplicate else "stored").inc()
        log.info(
            "mail.accepted",
            mail_id=mail_id,
            sender=sender,
            rcpts=recipients,
            size=len(raw),
            message_id=message_id,
            duplicate=duplicate,
        )
        return f"250 2.0.0 Queued as {mail_id}"


def _peer(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "")


def smtp_factory(handler: IngestHandler, config: MailConfig) -> Callable[[], SMTP]:
    """A protocol factory for `loop.create_server`: one aiosmtpd `SMTP` per connection."""
    tls = config.tls_context()
    kwargs: dict[str, Any] = {
        "data_size_limit": config.max_bytes,
        "enable_SMTPUTF8": True,
        "decode_data": False,
        "hostname": config.server_name,
        "ident": "agent-mesh ESMTP",
    }
    if tls is not None:
        kwargs.update(tls_context=tls, require_starttls=config.require_tls)
    if config.auth_user:
        user, password = config.auth_user.encode(), (config.auth_password or "").encode()

        def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and data.login == user and data.password == password
            return AuthResult(success=ok, handled=False)

        kwargs.update(authenticator=authenticate, auth_required=True, auth_require_tls=tls is not None)

    def factory() -> SMTP:
        return SMTP(handler, loop=asyncio.get_running_loop(), **kwargs)

    return factory
