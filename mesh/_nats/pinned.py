"""A durable pull consumer that one client pulls at a time: a JetStream priority group, `pinned_client`.

Messages held by two pullers at once could reach their instance in either order, so durable
delivery lets one worker at a time pull a partition. JetStream pins the group to the first client
that pulls (its messages carry `Nats-Pin-Id`, which its later pulls send back); other clients'
pulls only expire (408) until the pinned client has not pulled for `priority_timeout`, or it
unpins itself on stop. Then the next puller is pinned and a pull from the old pin id gets 423.

nats-py 2.16 has no API for priority groups (NOTES 3.3), so this speaks the JetStream API itself:
consumer create, info, unpin, and pull requests to `$JS.API.CONSUMER.MSG.NEXT` on an inbox of its
own. Acks are written straight into the connection's buffer (`ack`), like replies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from mesh._nats.connection import Connection, Message, Subscription, subscribe, unsubscribe
from mesh._nats.healing import healer_of
from mesh._nats.inbox import request
from mesh._nats.outbox import publish, publish_now
from mesh.errors import MeshError, MeshTimeout, RequestError, Unavailable

GROUP = "mesh"
HEADER_PIN = "Nats-Pin-Id"

ACK = b"+ACK"
PROGRESS = b"+WPI"
NAK = b"-NAK"


class PinnedConsumer:
    """One durable consumer of `stream` in priority group `mesh` (`pinned_client`).

    `pull` asks for a batch; the messages go to `on_message` as they arrive (in the subscription's
    task, one at a time), a change of pin to `on_pinned` first. `pin` is the id this client holds,
    None while it holds none.
    """

    def __init__(
        self,
        nc: Connection,
        stream: str,
        config: dict[str, Any],
        on_message: Callable[[Message], None],
        on_pinned: Callable[[], None],
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.name: str = config["durable_name"]
        self.config = {**config, "priority_groups": [GROUP], "priority_policy": "pinned_client"}
        self.pin: str | None = None
        self._on_message = on_message
        self._on_pinned = on_pinned
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._done: asyncio.Future[str] | None = None
        self._left = 0
        self._api = f"$JS.API.CONSUMER.%s.{stream}.{self.name}"

    async def create(self) -> None:
        """Create the consumer (or find it as configured); one made without the priority group (by
        an older worker) is deleted and made again: its unacked messages stay in the stream."""
        healer_of(self.nc).remember_consumer(self.stream, self.name, self._create)
        try:
            await self._create()
        except RequestError:
            found = await self._call("INFO", {})
            if found.get("config", {}).get("priority_groups"):
                raise
            await self._call("DELETE", {})
            await self._create()
        if self._sub is None:
            self._sub = await subscribe(self.nc, self._inbox, cb=self._on_reply)

    async def _create(self) -> None:
        await self._call("CREATE", {"stream_name": self.stream, "config": self.config})

    async def _call(self, verb: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109 - the API call's
        try:
            reply = await request(self.nc, self._api % verb, orjson.dumps(body), timeout=timeout)
        except MeshTimeout as exc:  # JetStream is electing a leader, or the link stalls
            raise Unavailable(f"consumer {self.name}: no answer in time") from exc
        data: dict[str, Any] = orjson.loads(reply.data or b"{}")
        error = data.get("error")
        if error:
            code, text = error.get("code", 500), f"consumer {self.name}: {error.get('description', error)}"
            if code >= 500:
                raise Unavailable(text)
            raise RequestError(text)
        return data

    async def ack_pending(self) -> int:
        """Messages delivered (to anyone) and not yet acknowledged."""
        info = await self._call("INFO", {})
        return int(info.get("num_ack_pending", 0))

    async def pullers(self) -> int:
        """Pull requests waiting on the consumer: about one per client that pulls it."""
        info = await self._call("INFO", {})
        return int(info.get("num_waiting", 0))

    async def unpin(self) -> None:
        """Let the next puller be pinned now rather than after `priority_timeout`."""
        if self.pin is not None:
            self.pin = None
            await self._call("UNPIN", {"group": GROUP}, timeout=2.0)

    async def pull(self, batch: int, expires: float) -> str:
        """One pull request; returns how it ended: "full", or the status ("408" expired, "423"
        the pin moved to another client, "409" ...), or "lost" when nothing answered in time."""
        body: dict[str, Any] = {"batch": batch, "expires": int(expires * 1e9), "group": GROUP}
        if self.pin is not None:
            body["id"] = self.pin
        self._left = batch
        self._done = done = asyncio.get_running_loop().create_future()
        await publish(self.nc, self._api % "MSG.NEXT", orjson.dumps(body), reply=self._inbox)
        try:
            async with asyncio.timeout(expires + 2.0):
                how: str = await done
                return how
        except TimeoutError:
            return "lost"
        finally:
            self._done = None

    async def _on_reply(self, msg: Message) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is not None:
            if status == "100":
                return  # idle heartbeat
            if status == "423":
                self.pin = None
            self._finish(status)
            return
        pin = headers.get(HEADER_PIN) if headers else None
        if pin is not None and pin != self.pin:
            self.pin = pin
            self._on_pinned()
        self._on_message(msg)
        self._left -= 1
        if self._left <= 0:
            self._finish("full")

    def _finish(self, how: str) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(how)

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await unsubscribe(sub)


def settle(nc: Connection, msg: Message, verb: bytes) -> bool:
    """Ack, nak or extend one delivered message by writing the reply into the connection's buffer;
    False if that must wait (the caller then awaits `settle_later`)."""
    reply = msg.reply
    if not reply:
        return True
    try:
        return publish_now(nc, reply, verb)
    except MeshError:
        return True  # the connection is gone: unacked, it comes back after ack_wait


async def settle_later(nc: Connection, msg: Message, verb: bytes) -> None:
    try:
        await publish(nc, msg.reply, verb)
    except MeshError:
        pass


def delivery_of(msg: Message) -> tuple[int, int, int]:
    """(times delivered, stream sequence, messages left to deliver) from a delivered message's ack
    subject, `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (or the form
    with a domain and an account hash): nats-py's `metadata` also builds a datetime and two objects."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[4]), int(tokens[5]), int(tokens[8])
    if len(tokens) >= 11:
        return int(tokens[6]), int(tokens[7]), int(tokens[10])
    meta = msg.metadata
    return meta.num_delivered or 1, meta.sequence.stream, meta.num_pending or 0


def nak_delay(delay: float) -> bytes:
    return NAK + b" " + orjson.dumps({"delay": int(delay * 1e9)}) if delay > 0 else NAK
