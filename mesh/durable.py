"""Durable sends: messages stored in JetStream before the send returns, run later as turns.

A durable message to `(type, name)` is published to `durable.<type>.<token>` in the stream
`MESH_DURABLE`. The stream's subject transform files it under one of `DURABLE_PARTITIONS`
partitions, `durable.<type>.<p>.<token>`, so every message of one instance lands in the same
partition. `mesh.delivery` consumes the partitions and runs each message as a turn of its instance;
`mesh.dedupe` makes a redelivered message's state effect happen once.

The same stream holds the schedules (`schedules.<type>.<token>.<id>`, see `mesh.schedules`): a
schedule's fired message is stored under the instance's durable subject, so it is delivered like
any durable send.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from mesh import subjects, wire
from mesh._nats import (
    Ack,
    Connection,
    JetStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
    ensure_stream,
    store,
)
from mesh._nats.stored import store_acked
from mesh.errors import MeshError, NameInvalid, NoResponders, RequestError, Unavailable

DEAD_MAX_AGE = 30 * 24 * 3600.0


@dataclass(frozen=True)
class DurableOptions:
    """How durable messages are delivered, retried and given up on."""

    max_attempts: int = 5
    """Deliveries of a message whose turn fails before it goes to the dead letters."""
    backoff: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)
    """Delay before the n-th redelivery (the last value repeats)."""
    ack_wait: float = 10.0
    """Seconds without an ack or progress signal after which JetStream redelivers (a dead puller)."""
    turn_timeout: float = 30.0
    """How long a delivery waits for its turn's reply before counting the attempt as failed."""
    fetch_wait: float = 1.0
    """How long one pull waits for a message; also bounds how long a stopping worker waits."""
    replicas: int = 1
    """Replicas of the MESH_DURABLE and MESH_DEAD streams (3 on a three-node cluster)."""
    balance_every: float = 5.0
    """Seconds between checks that a worker holds no more than its share of a type's partitions."""
    partitions: tuple[int, ...] = field(default_factory=lambda: tuple(range(subjects.DURABLE_PARTITIONS)))

    def delay(self, attempt: int) -> float:
        return self.backoff[min(max(attempt, 1), len(self.backoff)) - 1] if self.backoff else 0.0


def durable_stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=subjects.DURABLE_STREAM,
        description="agent-mesh durable messages and schedules",
        subjects=["durable.*.*", "schedules.*.*.*"],
        subject_transform=SubjectTransform(
            src="durable.*.*",
            dest=f"durable.{{{{wildcard(1)}}}}.{{{{partition({subjects.DURABLE_PARTITIONS},2)}}}}.{{{{wildcard(2)}}}}",
        ),
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=120.0,
        allow_msg_schedules=True,
    )


def dead_stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=subjects.DEAD_STREAM,
        description="agent-mesh dead letters: durable messages that kept failing",
        subjects=["dead.*.*"],
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=DEAD_MAX_AGE,
    )


async def ensure_streams(js: JetStream, replicas: int = 1) -> None:
    """Create MESH_DURABLE and MESH_DEAD if missing; existing streams are left as they are."""
    for config in (durable_stream_config(replicas), dead_stream_config(replicas)):
        await ensure_stream(js, config)


def new_msg_id() -> str:
    return os.urandom(12).hex()


async def publish_durable(
    js: JetStream,
    agent_type: str,
    name: str,
    payload: Any = None,
    *,
    msg_id: str | None = None,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    replicas: int = 1,
    retry_for: float = 15.0,
) -> Ack:
    """Store a message for `(agent_type, name)`; returns once JetStream has it (its `Ack`).

    `msg_id` (default: random) is the `Nats-Msg-Id`: publishing the same id again within two minutes
    stores nothing new (`ack.duplicate`), so a caller may retry a send whose ack it did not see.
    Transient failures (a stream leader election) are retried with the same id for `retry_for` s.
    """
    subject = subjects.durable_subject(agent_type, name)
    data = payload if isinstance(payload, bytes) else wire.dumps(payload)
    out = dict(headers or {})
    out[subjects.HEADER_NATS_MSG_ID] = msg_id or new_msg_id()
    if method:
        if not method.isidentifier():
            raise NameInvalid(f"method {method[:80]!r} is not an identifier")
        out[subjects.HEADER_METHOD] = method
    return await publish_retrying(js, subject, data, out, replicas=replicas, retry_for=retry_for)


async def publish_retrying(
    js: JetStream,
    subject: str,
    data: bytes,
    headers: dict[str, str],
    *,
    replicas: int = 1,
    retry_for: float = 15.0,
) -> Ack:
    """JetStream publish that creates the streams on first use and rides out leader elections.

    Refusals (`RequestError`: too large, a bad header; `NotStored`, ...) are raised at once;
    `Unavailable` (no answer, 5xx, reconnecting) is retried, for `retry_for` seconds in all.
    """
    deadline = time.monotonic() + retry_for
    created = False
    while True:
        try:
            if isinstance(nc := getattr(js, "_nc", None), Connection):
                return await store_acked(nc, subject, data, dict(headers), timeout=2.0)
            return await store(js, subject, data, headers=dict(headers), timeout=2.0)
        except NoResponders as exc:
            error: MeshError = exc  # no stream yet, or its leader is being elected
            if not created:
                created = True
                try:
                    await ensure_streams(js, replicas)
                    continue
                except (Unavailable, NoResponders, RequestError) as exc2:
                    error = exc2
        except Unavailable as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise Unavailable(f"JetStream did not store the message on {subject}: [{error.code}] {error.message}") from error
        await asyncio.sleep(0.25)
