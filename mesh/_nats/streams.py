"""The JetStream stream and consumer operations the mesh and its services use, with mesh errors.

Stream and consumer configurations are nats-py's own dataclasses (`StreamConfig`,
`ConsumerConfig` and their enums, re-exported here): they describe the JetStream API's JSON, the
server's contract rather than nats-py's. Stored messages come back as `Stored` and acks as `Ack`,
plain values of the mesh's. A JetStream API call that does not answer in time is `Unavailable`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors as jse
import orjson
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)

from mesh._nats.connection import Connection, JetStream, Message, Subscription
from mesh._nats.errors import map_errors
from mesh._nats.healing import healer_of
from mesh.errors import Unavailable

MESSAGE_DELETE_FAILED = 10057
"""JetStream's error code (with status 500) for a delete of a message that is not there, or not allowed."""

__all__ = [
    "Ack",
    "AckPolicy",
    "ConsumerConfig",
    "DeliverPolicy",
    "DiscardPolicy",
    "PullConsumer",
    "RetentionPolicy",
    "StorageType",
    "Stored",
    "StreamConfig",
    "SubjectTransform",
]


@dataclass(frozen=True)
class Ack:
    """JetStream's acknowledgement of a stored message; `duplicate` if its `Nats-Msg-Id` was seen."""

    stream: str
    seq: int
    duplicate: bool


@dataclass(frozen=True)
class Stored:
    """A message as a stream keeps it."""

    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes
    time: datetime | None


def _remember(js: JetStream, stream: str, recreate: Callable[[], Awaitable[object]]) -> None:
    """Have the connection's healer make `stream` again if a server restarts without it."""
    if isinstance(nc := getattr(js, "_nc", None), Connection):
        healer_of(nc).remember_stream(stream, recreate)


def _stored(raw: RawStreamMsg) -> Stored:
    return Stored(raw.seq or 0, raw.subject or "", dict(raw.headers or {}), raw.data or b"", raw.time)


async def ensure_stream(js: JetStream, config: StreamConfig) -> None:
    """Create a stream if it is missing; an existing one (maybe configured by an operator) is kept."""
    assert config.name is not None
    _remember(js, config.name, functools.partial(ensure_stream, js, config))
    with map_errors(f"stream {config.name}", timeout=Unavailable):
        try:
            await js.stream_info(config.name)
            return
        except jse.NotFoundError:
            pass
        try:
            await js.add_stream(config)
        except jse.BadRequestError:
            await js.stream_info(config.name)  # another process created it first


async def find_stream(js: JetStream, subject: str) -> str | None:
    """The name of the stream that stores `subject`, or None."""
    with map_errors(f"stream lookup for {subject}", timeout=Unavailable):
        try:
            return await js.find_stream_name_by_subject(subject)
        except jse.NotFoundError:
            return None


async def stream_for(js: JetStream, subject: str, config: StreamConfig) -> str | None:
    """The stream that stores `subject`, created from `config` if there is none; None if another
    process's stream creation raced ours and still cannot be found."""
    found = await find_stream(js, subject)
    assert config.name is not None
    _remember(js, found or config.name, functools.partial(stream_for, js, subject, config))
    if found is not None:
        return found
    with map_errors(f"stream {config.name}", timeout=Unavailable):
        try:
            await js.add_stream(config)
            return config.name
        except jse.BadRequestError:
            pass
    return await find_stream(js, subject)


async def stream_subjects(js: JetStream, stream: str, subjects_filter: str) -> dict[str, int]:
    """The subjects matching `subjects_filter` that `stream` holds messages on (with their counts);
    empty if the stream does not exist."""
    with map_errors(f"stream {stream}", timeout=Unavailable):
        try:
            info = await js.stream_info(stream, subjects_filter=subjects_filter)
        except jse.NotFoundError:
            return {}
    return dict(info.state.subjects or {})


async def store(
    js: JetStream,
    subject: str,
    data: bytes,
    *,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - JetStream's ack wait
    stream: str | None = None,
) -> Ack:
    """Publish to a stream and wait for its ack (`NoResponders` if no stream stores `subject`)."""
    with map_errors(f"store on {subject[:200]}", timeout=Unavailable):
        ack = await js.publish(subject, data, timeout=timeout, stream=stream, headers=headers)
    return Ack(ack.stream, ack.seq, bool(ack.duplicate))


async def get_stored(
    js: JetStream, stream: str, *, seq: int | None = None, subject: str | None = None, next: bool = False
) -> Stored | None:
    """Message `seq` of `stream` (with `next`: the first at or after `seq` on `subject`), or None."""
    with map_errors(f"stream {stream}", timeout=Unavailable):
        try:
            return _stored(await js.get_msg(stream, seq=seq, subject=subject, next=next))
        except jse.NotFoundError:
            return None


async def last_stored(js: JetStream, stream: str, subject: str) -> Stored | None:
    """The last message on `subject` in `stream`, or None."""
    with map_errors(f"stream {stream}", timeout=Unavailable):
        try:
            return _stored(await js.get_last_msg(stream, subject))
        except jse.NotFoundError:
            return None


async def delete_stored(js: JetStream, stream: str, seq: int) -> bool:
    """Delete message `seq` from `stream`; False if it was not there (or the stream denies deletes)."""
    with map_errors(f"stream {stream}", timeout=Unavailable):
        try:
            return await js.delete_msg(stream, seq)
        except jse.APIError as exc:
            if isinstance(exc, jse.NotFoundError) or exc.err_code == MESSAGE_DELETE_FAILED:
                return False
            raise


async def purge(js: JetStream, stream: str, subject: str, *, keep: int | None = None) -> None:
    """Remove the messages on `subject` from `stream` (all, or all but the last `keep`)."""
    with map_errors(f"stream {stream}", timeout=Unavailable):
        await js.purge_stream(stream, subject=subject, keep=keep)


async def read_subject(nc: Connection, stream: str, subject: str, *, timeout: float = 5.0) -> list[tuple[int, bytes]]:  # noqa: ASYNC109 - per batch, not for the whole read
    """Every message `stream` holds on `subject` as (sequence, data), oldest first: batched direct
    gets of up to 1,000 messages per round trip (the stream needs `allow_direct`)."""
    found: list[tuple[int, bytes]] = []
    inbox = nc.new_inbox()
    with map_errors(f"stream {stream}", timeout=Unavailable):
        sub = await nc.subscribe(inbox)
        try:
            start = 0
            while True:
                request = {"seq": start, "next_by_subj": subject, "batch": 1000}
                await nc.publish(f"$JS.API.DIRECT.GET.{stream}", orjson.dumps(request), reply=inbox)
                pending = 0
                while True:
                    try:
                        msg = await sub.next_msg(timeout=timeout)
                    except nats.errors.TimeoutError as exc:
                        raise Unavailable(f"stream {stream} did not answer a read of {subject}") from exc
                    headers: dict[str, Any] = msg.headers or {}
                    status = headers.get("Status")
                    if status == "404":
                        return found
                    if status:  # 204 end of batch
                        pending = int(headers.get("Nats-Num-Pending", "0") or 0)
                        break
                    found.append((int(headers["Nats-Sequence"]), msg.data))
                if pending <= 0 or not found:
                    return found
                start = found[-1][0] + 1
        finally:
            await sub.unsubscribe()


class PullConsumer:
    """A bound durable pull consumer: `fetch` messages, ack each (`Message.ack`), `close` at the end."""

    def __init__(self, sub: JetStream.PullSubscription, durable: str) -> None:
        self._sub = sub
        self.durable = durable

    async def fetch(self, batch: int, timeout: float) -> list[Message]:  # noqa: ASYNC109 - the pull request's expiry, sent to the server
        """Up to `batch` messages, waiting at most `timeout` seconds; [] if none came."""
        with map_errors(f"consumer {self.durable}", timeout=Unavailable):
            try:
                return await self._sub.fetch(batch, timeout=timeout)
            except TimeoutError:  # nats-py's, and asyncio's from inside fetch
                return []

    async def close(self) -> None:
        with map_errors(f"consumer {self.durable}", timeout=Unavailable):
            await self._sub.unsubscribe()


async def add_pull_consumer(js: JetStream, stream: str, config: ConsumerConfig) -> PullConsumer:
    """Create (or update) the durable pull consumer `config.durable_name` on `stream` and bind it."""
    assert config.durable_name is not None
    if isinstance(nc := getattr(js, "_nc", None), Connection):
        healer_of(nc).remember_consumer(stream, config.durable_name, functools.partial(js.add_consumer, stream, config))
    with map_errors(f"consumer {config.durable_name}", timeout=Unavailable):
        await js.add_consumer(stream, config)
        sub = await js.pull_subscribe_bind(durable=config.durable_name, stream=stream)
    return PullConsumer(sub, config.durable_name)


async def pull_consumer(js: JetStream, subject: str, stream: str, durable: str, config: ConsumerConfig) -> PullConsumer:
    """Bind the durable pull consumer `durable` on `subject`, creating it with `config` if missing."""
    with map_errors(f"consumer {durable}", timeout=Unavailable):
        sub = await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
    return PullConsumer(sub, durable)


async def follow_stream(
    js: JetStream,
    subject: str,
    stream: str,
    *,
    after: int | None = None,
    cb: Callable[[Message], Awaitable[None]] | None = None,
) -> Subscription:
    """An ordered consumer on `subject`: every stored message (`after=None`), those after sequence
    `after`, or (`after=-1`) only new ones; to `cb`, or read with `next_message`."""
    if after is None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    elif after < 0:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
    with map_errors(f"stream {stream}", timeout=Unavailable):
        return await js.subscribe(subject, stream=stream, cb=cb, ordered_consumer=True, config=config)
