"""Accepted mail to agent turns to replies: at least once from the stream, once per message.

For each stored mail and each of its routed recipients: skip it if its dedupe record says it was
handled (same Message-ID, or same content when there is none, to the same instance), call the
instance over the bus with the parsed mail (`Mesh-Mail: 1`), queue the reply in the outbox, write
the dedupe record, and only then acknowledge the stream message. A crash anywhere before the ack
means redelivery, never loss; the dedupe record and the outbox's own dedupe keep the redelivered
mail from being answered twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from mesh import subjects, wire
from mesh.bus import AckPolicy, ConsumerConfig, Message, map_errors
from mesh.client import MeshClient
from mesh.errors import ConnectionFailed, MeshError, MeshTimeout, NoResponders, OutcomeUnknown, Unavailable
from mesh.mail import InboundEmail
from mesh.tasks import TaskSet
from services.mail.approvals import MailApprovals
from services.mail.config import MailConfig
from services.mail.outbox import Outbox, build_reply, reply_text
from services.mail.parse import Unparseable, parse_message
from services.mail.ratelimit import ReplyRateLimit
from services.mail.routing import Resolver, Route, agent_address
from services.mail.store import MailStore, message_key, pull_subscription, short_hash

TRANSIENT = (NoResponders, Unavailable, MeshTimeout, OutcomeUnknown, ConnectionFailed)
RETRY_DELAYS = (1.0, 2.0, 5.0, 15.0, 60.0)
MAX_CONCURRENT = 8

log = structlog.get_logger("mesh.mail")


class Processor:
    """Consumes `mesh_mail_in` (durable consumer `mesh_mail_processor`) and answers mail."""

    def __init__(self, store: MailStore, client: MeshClient, outbox: Outbox, config: MailConfig, resolver: Resolver) -> None:
        self.store = store
        self.client = client
        self.outbox = outbox
        self.config = config
        self.resolver = resolver
        self.rate = ReplyRateLimit(store, config.reply_limit, config.reply_window)
        self.approvals = MailApprovals(store, client, outbox, config)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._keepalives = TaskSet(log, "mail.keepalive_failed")

    async def serve(self) -> None:
        sub = await pull_subscription(
            self.store.js,
            subjects.MAIL_INBOUND_SUBJECT,
            subjects.MAIL_INBOUND_STREAM,
            "mesh_mail_processor",
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, ack_wait=self.config.ack_wait, max_deliver=-1, max_ack_pending=MAX_CONCURRENT * 4
            ),
        )
        inflight = TaskSet(log, "mail.process_failed")
        try:
            while True:
                free = MAX_CONCURRENT - len(inflight)
                if free <= 0:  # every slot busy (long agent turns): wait for one, keep the rest running
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(free, timeout=5.0)
                except ConnectionFailed:
                    return
                except Exception as exc:  # NATS reconnecting
                    log.warning("mail.fetch_failed", error=str(exc) or type(exc).__name__)
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    inflight.spawn(self.process(msg))
        finally:
            await inflight.cancel_all()  # unacknowledged: JetStream redelivers them after ack_wait
            await self._keepalives.cancel_all()

    async def process(self, msg: Message) -> None:
        """Handle one stored mail; never raises (the message is acked, retried later, or terminated)."""
        keepalive = self._keepalives.spawn(self._keep_alive(msg))
        try:
            envelope, raw = await self.store.load(msg)
            for rcpt in envelope.rcpt_tos:
                route = self.resolver(rcpt)
                if route is None:
                    log.warning("mail.unroutable", mail_id=envelope.mail_id, rcpt=rcpt)
                    continue
                try:
                    mail = parse_message(
                        raw,
                        mail_id=envelope.mail_id,
                        sender=envelope.mail_from,
                        recipients=[rcpt],
                        trusted_authserv=self.config.trusted_authserv,
                    )
                except Unparseable as exc:
                    log.warning("mail.unparseable", mail_id=envelope.mail_id, error=str(exc))
                    continue
                await self.deliver(route, mail, message_key(mail.message_id, raw))
        except TRANSIENT as exc:
            delay = RETRY_DELAYS[min((msg.metadata.num_delivered or 1) - 1, len(RETRY_DELAYS) - 1)]
            log.info("mail.deferred", code=exc.code, error=exc.message, retry_in=delay)
            await _quietly(msg.nak(delay=delay))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or NATS trouble: retry later rather than lose the mail
            log.error("mail.process_failed", exc_info=exc)
            await _quietly(msg.nak(delay=RETRY_DELAYS[-1]))
            return
        finally:
            keepalive.cancel()
        await self.store.discard_object(msg)
        await _quietly(msg.ack())

    async def deliver(self, route: Route, mail: InboundEmail, key: str) -> None:
        """One recipient's copy: dedupe, agent turn, reply, record."""
        name = route.instance_for(mail.sender)
        seen = short_hash(key, route.agent_type, name)
        # Two copies of one message (different envelopes) in flight at once: the second waits, then
        # finds the first one's record. (Across processes the window is one agent turn; see subjects.md.)
        lock, users = self._locks.get(seen, (asyncio.Lock(), 0))
        self._locks[seen] = (lock, users + 1)
        try:
            async with lock:
                await self._deliver_once(route, name, seen, mail)
        finally:
            lock, users = self._locks[seen]
            if users <= 1:
                del self._locks[seen]
            else:
                self._locks[seen] = (lock, users - 1)

    async def _deliver_once(self, route: Route, name: str, seen: str, mail: InboundEmail) -> None:
        done = await self.store.get_record("seen", seen)
        if done is not None:
            log.info(
                "mail.duplicate", mail_id=mail.mail_id, message_id=mail.message_id, agent_type=route.agent_type, agent_name=name
            )
            return
        bound = log.bind(mail_id=mail.mail_id, agent_type=route.agent_type, agent_name=name)
        if route.token is not None:
            outcome = await self.approvals.handle_reply(route, name, mail)
            await self.store.put_record("seen", seen, {"status": outcome, "at": time.time()})
            return
        try:
            body = await self.client.call_raw(
                subjects.agent_subject(route.agent_type, name),
                mail.model_dump_json().encode(),
                timeout=self.config.call_timeout,
                headers={subjects.HEADER_MAIL: "1"},
                request_id=f"mail-{seen}",  # a retry (or another process's copy) takes effect once
            )
            result = wire.loads(body)
            status = "answered"
        except TRANSIENT:
            raise
        except MeshError as err:  # the agent refused or failed: tell the sender, do not retry forever
            bound.warning("mail.agent_failed", code=err.code, error=err.message)
            result = f"Sorry, your mail could not be handled ({err.code}): {err.message}"
            status = f"failed:{err.code}"
        bound.info("mail.delivered", status=status, automatic=mail.automatic, message_id=mail.message_id)
        text = reply_text(result)
        if text is not None:
            await self.maybe_reply(route.agent_type, name, mail, text, seen)
        if isinstance(result, dict) and result.get("status") == "awaiting_approval":
            await self.approvals.request(route.agent_type, name, mail, result)
        await self.store.put_record("seen", seen, {"status": status, "at": time.time()})

    async def maybe_reply(self, agent_type: str, name: str, mail: InboundEmail, text: str, dedupe_id: str) -> None:
        """Answer in the mail's thread unless RFC 3834 or the per-sender rate limit says no."""
        reason = mail.automatic_reason if mail.automatic else None
        if reason is None and not mail.sender:
            reason = "null sender"
        if reason is None and not await self.rate.allow(mail.sender):
            reason = "rate limited"
        if reason is not None:
            log.info("mail.reply_suppressed", mail_id=mail.mail_id, reason=reason, sender=mail.sender)
            return
        reply = build_reply(
            mail,
            from_address=agent_address(agent_type, name, self.config.domain),
            from_name=agent_type.capitalize(),
            text=text,
            domain=self.config.domain,
        )
        await self.outbox.enqueue(reply, dedupe_id)

    async def _keep_alive(self, msg: Message) -> None:
        """Tell JetStream the mail is still being worked on while a long agent turn runs."""
        while True:
            await asyncio.sleep(max(0.5, self.config.ack_wait / 3))
            await _quietly(msg.in_progress())


async def _quietly(op: Any) -> None:
    try:
        with map_errors("acknowledge a mail"):
            await op
    except MeshError as exc:
        log.warning("mail.ack_failed", code=exc.code, error=exc.message)
