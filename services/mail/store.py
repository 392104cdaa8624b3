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

import nats.errors
import nats.js.errors as jse
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from mesh import bus, subjects

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

    def __init__(self, js: JetStreamContext, *, stream_limit: int, timeout: float) -> None:
        self.js = js
        self.stream_limit = stream_limit
        self.timeout = timeout
        self.kv: KeyValue
        self._objects: ObjectStore | None = None

    @classmethod
    async def open(cls, js: JetStreamContext, *, stream_limit: int = 512 * 1024, timeout: float = 5.0) -> MailStore:
        store = cls(js, stream_limit=stream_limit, timeout=timeout)
        for name, subject in (
            (subjects.MAIL_INBOUND_STREAM, subjects.MAIL_INBOUND_SUBJECT),
            (subjects.MAIL_OUTBOX_STREAM, subjects.MAIL_OUTBOX_SUBJECT),
        ):
            await bus.ensure_stream(
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
        try:
            store.kv = await js.key_value(subjects.MAIL_BUCKET)
        except jse.BucketNotFoundError:
            try:
                store.kv = await js.create_key_value(
                    KeyValueConfig(
                        bucket=subjects.MAIL_BUCKET,
                        history=1,
                        storage=StorageType.FILE,
                        direct=True,
                    )
                )
            except jse.BadRequestError:
                store.kv = await js.key_value(subjects.MAIL_BUCKET)
        return store

    async def objects(self) -> ObjectStore:
        if self._objects is None:
            try:
                self._objects = await self.js.object_store(subjects.MAIL_OBJECTS)
            except (jse.BucketNotFoundError, jse.NotFoundError):
                # nats-py overwrites config.bucket with the `bucket` argument, so pass both.
                self._objects = await self.js.create_object_store(
                    bucket=subjects.MAIL_OBJECTS,
                    config=ObjectStoreConfig(bucket=subjects.MAIL_OBJECTS, storage=StorageType.FILE),
                )
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
            ack = await self.js.publish(
                subjects.MAIL_INBOUND_SUBJECT,
                body,
                timeout=self.timeout,
                headers=headers,
                stream=subjects.MAIL_INBOUND_STREAM,
            )
        except Exception as exc:  # timeouts, no JetStream, closed or reconnecting connection
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return bool(ack.duplicate)

    async def load(self, msg: Msg) -> tuple[MailEnvelope, bytes]:
        headers = msg.headers or {}
        envelope = MailEnvelope.from_header(headers[subjects.HEADER_MAIL_ENVELOPE])
        name = headers.get(subjects.HEADER_MAIL_OBJECT)
        if name:
            result = await (await self.objects()).get(name)
            return envelope, bytes(result.data or b"")
        return envelope, msg.data

    async def discard_object(self, msg: Msg) -> None:
        name = (msg.headers or {}).get(subjects.HEADER_MAIL_OBJECT)
        if name:
            try:
                await (await self.objects()).delete(name)
            except jse.NotFoundError:
                pass

    # -- records ---------------------------------------------------------------------------------

    async def get_record(self, kind: str, key: str) -> tuple[dict[str, Any], int] | None:
        try:
            entry = await self.kv.get(f"{kind}.{key}")
        except jse.KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return json.loads(entry.value), entry.revision

    async def put_record(self, kind: str, key: str, value: dict[str, Any], last: int | None = None) -> int:
        """Write a record; with `last`, compare-and-set (0: must not exist) raising KeyWrongLastSequenceError."""
        data = json.dumps(value).encode()
        if last is None:
            return await self.kv.put(f"{kind}.{key}", data)
        if last == 0:
            return await self.kv.create(f"{kind}.{key}", data)
        return await self.kv.update(f"{kind}.{key}", data, last=last)


async def pull_subscription(
    js: JetStreamContext, subject: str, stream: str, durable: str, config: ConsumerConfig
) -> JetStreamContext.PullSubscription:
    """Bind (or create) a durable pull consumer, waiting out a NATS outage instead of failing."""
    delay = 0.2
    while True:
        try:
            return await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        except nats.errors.ConnectionClosedError:
            raise
        except Exception as exc:  # no JetStream yet, timeouts while reconnecting
            log.warning("mail.subscribe_failed", durable=durable, error=str(exc) or type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
