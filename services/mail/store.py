"""Durable mail storage in JetStream: accepted raw mail, the outbox, and the service's records.

    stream mesh_mail_in   subject mesh_mail.in    work queue: one message per accepted mail
    stream mesh_mail_out  subject mesh_mail.out   work queue: one message per reply to send
    object store mesh_mail_raw                    raw mail over `stream_limit` (the stream message
                                                  then carries only its object name)
    KV mesh_mail          seen.<h>  out.<id>  rate.<h>

A mail is acknowledged to the sender (250) only after JetStream has acknowledged the stream
message, so it is on disk; a core NATS subject never carries a whole mail.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from mesh import subjects
from mesh.bus import (
    Bucket,
    Connection,
    ConsumerConfig,
    DiscardPolicy,
    JetStream,
    Message,
    Objects,
    PullConsumer,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    ensure_stream,
    open_bucket,
    open_objects,
    pull_consumer,
    store,
)
from mesh.errors import ConnectionFailed, MeshError, NotStored

log = structlog.get_logger("mesh.mail")


class StoreUnavailable(Exception):
    """JetStream did not confirm the write; the SMTP reply is 451 so the sender retries."""


@dataclass
class MailEnvelope:
    """The SMTP envelope of an accepted mail, stored next to its raw bytes."""

    mail_id: str
    mail_from: str
    rcpt_tos: list[str]
    peer: str = ""
    received: float = field(default_factory=time.time)

    def header(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=True, separators=(",", ":"))

    @classmethod
    def from_header(cls, value: str) -> MailEnvelope:
        return cls(**json.loads(value))


def message_key(message_id: str | None, raw: bytes) -> str:
    """What makes two deliveries "the same message": its Message-ID, else a hash of its content."""
    if message_id:
        return "mid:" + message_id.strip()
    return "sha:" + hashlib.sha256(raw).hexdigest()


def short_hash(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:40]


class MailStore:
    """The mail service's JetStream resources, created on first use (idempotent)."""

    def __init__(self, js: JetStream, *, stream_limit: int, timeout: float) -> None:
        self.js = js
        self.stream_limit = stream_limit
        self.timeout = timeout
        self.kv: Bucket
        self._objects: Objects | None = None

    @classmethod
    async def open(cls, nc: Connection, *, stream_limit: int = 512 * 1024, timeout: float = 5.0) -> MailStore:  # noqa: ASYNC109 - JetStream's ack wait for each store
        js = nc.jetstream()
        mail = cls(js, stream_limit=stream_limit, timeout=timeout)
        for name, subject in (
            (subjects.MAIL_INBOUND_STREAM, subjects.MAIL_INBOUND_SUBJECT),
            (subjects.MAIL_OUTBOX_STREAM, subjects.MAIL_OUTBOX_SUBJECT),
        ):
            await ensure_stream(
                js,
                StreamConfig(
                    name=name,
                    subjects=[subject],
                    retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE,
                    discard=DiscardPolicy.NEW,
                    duplicate_window=120.0,
                    description="agent-mesh mail",
                ),
            )
        mail.kv = await open_bucket(nc, subjects.MAIL_BUCKET)
        return mail

    async def objects(self) -> Objects:
        if self._objects is None:
            self._objects = await open_objects(self.js, subjects.MAIL_OBJECTS)
        return self._objects

    # -- inbound ---------------------------------------------------------------------------------

    async def accept(self, raw: bytes, envelope: MailEnvelope, dedupe_id: str) -> bool:
        """Store one accepted mail; True when JetStream had it already (a re-send within 2 minutes)."""
        headers = {subjects.HEADER_MAIL_ENVELOPE: envelope.header(), subjects.HEADER_NATS_MSG_ID: dedupe_id}
        body = raw
        try:
            if len(raw) > self.stream_limit:
                await (await self.objects()).put(envelope.mail_id, raw)
                headers[subjects.HEADER_MAIL_OBJECT] = envelope.mail_id
                body = b""
            ack = await store(
                self.js,
                subjects.MAIL_INBOUND_SUBJECT,
                body,
                timeout=self.timeout,
                headers=headers,
                stream=subjects.MAIL_INBOUND_STREAM,
            )
        except MeshError as exc:  # timeouts, no JetStream, closed or reconnecting connection
            raise StoreUnavailable(f"[{exc.code}] {exc.message}") from exc
        return bool(ack.duplicate)

    async def load(self, msg: Message) -> tuple[MailEnvelope, bytes]:
        headers = msg.headers or {}
        envelope = MailEnvelope.from_header(headers[subjects.HEADER_MAIL_ENVELOPE])
        name = headers.get(subjects.HEADER_MAIL_OBJECT)
        if name:
            raw = await (await self.objects()).get(name)
            if raw is None:
                raise NotStored(f"the raw mail {name} is gone from {subjects.MAIL_OBJECTS}")
            return envelope, raw
        return envelope, msg.data

    async def discard_object(self, msg: Message) -> None:
        name = (msg.headers or {}).get(subjects.HEADER_MAIL_OBJECT)
        if name:
            await (await self.objects()).delete(name)

    # -- records ---------------------------------------------------------------------------------

    async def get_record(self, kind: str, key: str) -> tuple[dict[str, Any], int] | None:
        found = await self.kv.get(f"{kind}.{key}")
        if found is None:
            return None
        return json.loads(found[0]), found[1]

    async def put_record(self, kind: str, key: str, value: dict[str, Any], last: int | None = None) -> int:
        """Write a record; with `last`, compare-and-set (0: must not exist) raising `StateConflict`."""
        data = json.dumps(value).encode()
        if last is None:
            return await self.kv.put(f"{kind}.{key}", data)
        return await self.kv.write(f"{kind}.{key}", data, last)


async def pull_subscription(js: JetStream, subject: str, stream: str, durable: str, config: ConsumerConfig) -> PullConsumer:
    """Bind (or create) a durable pull consumer, waiting out a NATS outage instead of failing."""
    delay = 0.2
    while True:
        try:
            return await pull_consumer(js, subject, stream, durable, config)
        except ConnectionFailed:
            raise
        except MeshError as exc:  # no JetStream yet, timeouts while reconnecting
            log.warning("mail.subscribe_failed", durable=durable, code=exc.code, error=exc.message)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
