"""Every reply tells the truth: a state write whose ack is lost is settled (stored, definitely not,
or `outcome_unknown`), and the reply inbox never expires a reply that already arrived.

A real nats-server throughout; the lost acks come from `mesh.faults.FaultProxy`, which holds bytes
in one direction with the sockets open."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from core_agents import AGENTS

from mesh import subjects
from mesh._nats.inbox import inbox_of
from mesh._nats.kv import write_id
from mesh.activation import Status
from mesh.bus import Connection, Message, NatsOptions, NatsServer, connect, open_bucket
from mesh.client import MeshClient
from mesh.errors import MeshTimeout, NoResponders, OutcomeUnknown, StateConflict
from mesh.faults import Direction, FaultProxy, state_write_marker
from mesh.runtime import Runtime
from mesh.testing import eventually

KEY = "t.k"
MARKER = f"PUB $KV.wo.{KEY} ".encode()


async def through(proxy: FaultProxy) -> Connection:
    return await connect(NatsOptions.from_url(proxy.url, name="faulted"))


async def test_a_write_whose_ack_was_lost_is_settled_as_stored(nats_server: NatsServer) -> None:
    async with FaultProxy(nats_server.url) as proxy:
        nc = await through(proxy)
        try:
            bucket = await open_bucket(nc, "wo", timeout=1.0)
            base = await bucket.save(KEY, b"1", 0, write=write_id("w1", 0))
            ours = write_id("w1", base)
            held = proxy.hold_after(MARKER)  # the write reaches the server; its ack is held
            saving = asyncio.create_task(bucket.save(KEY, b"2", base, write=ours))
            async with asyncio.timeout(5):
                await held.wait()
            resent = proxy.hold_after(MARKER)  # no ack within 1 s: the same write is sent again
            async with asyncio.timeout(5):
                await resent.wait()
            proxy.release()
            revision = await saving
            found = await bucket.get_with_headers(KEY)
            assert found is not None
            assert found[0] == b"2" and found[1] == revision  # the first send, stored once
            assert found[2][subjects.HEADER_WRITE] == ours
        finally:
            await nc.close()


async def test_a_write_that_lost_to_another_on_the_same_revision_is_a_definite_conflict(nats_server: NatsServer) -> None:
    other = await connect(NatsOptions.from_url(nats_server.url))
    async with FaultProxy(nats_server.url) as proxy:
        nc = await through(proxy)
        try:
            bucket = await open_bucket(nc, "wo", timeout=1.0)
            direct = await open_bucket(other, "wo")
            base = await bucket.save(KEY, b"1", 0, write=write_id("w1", 0))
            proxy.stall(Direction.TO_SERVER)  # our write waits in the link...
            saving = asyncio.create_task(bucket.save(KEY, b"ours", base, write=write_id("w1", base)))
            await eventually(lambda: proxy.held(Direction.TO_SERVER) > 0)
            first = proxy.held(Direction.TO_SERVER)
            await direct.save(KEY, b"theirs", base, write=write_id("w2", base))  # ...another lands first
            await eventually(lambda: proxy.held(Direction.TO_SERVER) > first)  # the resend, after no ack
            proxy.release()
            with pytest.raises(StateConflict):
                await saving
            assert (await direct.get(KEY) or (b"",))[0] == b"theirs"
        finally:
            await nc.close()
            await other.close()


async def test_a_write_that_cannot_be_settled_is_outcome_unknown(nats_server: NatsServer) -> None:
    async with FaultProxy(nats_server.url) as proxy:
        nc = await through(proxy)
        try:
            bucket = await open_bucket(nc, "wo", timeout=1.0)
            base = await bucket.save(KEY, b"1", 0, write=write_id("w1", 0))
            held = proxy.hold_after(MARKER, partition=True)  # stored, then nothing gets through
            started = time.monotonic()
            with pytest.raises(OutcomeUnknown):
                await bucket.save(KEY, b"2", base, write=write_id("w1", base))
            assert time.monotonic() - started < 6  # the first wait plus the bounded settling
            assert held.is_set()
            proxy.release()
        finally:
            await nc.close()


@pytest.mark.parametrize("timeout", [0.5, 1.0])  # a timer of its own, and the shared sweep
async def test_a_reply_that_arrived_while_the_loop_was_stalled_is_not_expired(nats_server: NatsServer, timeout: float) -> None:
    nc = await connect(NatsOptions.from_url(nats_server.url))
    responder = SlowResponder(nats_server.url, "_wo.slow", delay=0.2)
    responder.start()
    try:
        inbox = inbox_of(nc)
        async with asyncio.timeout(5):
            await responder.ready.wait()
        await eventually(lambda: inbox.request("_wo.slow", b"ping", timeout=2), retry=(NoResponders,))
        responder.received = False
        asking = asyncio.create_task(inbox.request("_wo.slow", b"ping", timeout=timeout))
        await eventually(lambda: responder.received, interval=0.001)  # sent; the answer comes in 0.2 s
        stall(timeout + 0.5)  # the fault: the loop is blocked until past the request's deadline
        assert (await asking).data == b"pong"  # read after the stall, not declared timed out
        await nc.subscribe("_wo.silent")  # takes requests, never answers
        with pytest.raises(MeshTimeout):  # a request nobody answers still times out
            await inbox.request("_wo.silent", b"", timeout=timeout)
    finally:
        responder.stop()
        await nc.close()


class SlowResponder(threading.Thread):
    """Answers `subject` after `delay` seconds from its own thread and event loop, so it answers
    while the test's loop is stalled."""

    def __init__(self, url: str, subject: str, *, delay: float) -> None:
        super().__init__(daemon=True)
        self.url, self.subject, self.delay = url, subject, delay
        self.ready = asyncio.Event()  # set in the test's loop once subscribed
        self.received = False
        self._test_loop = asyncio.get_running_loop()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finish: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop, self._finish = asyncio.get_running_loop(), asyncio.Event()
        nc = await connect(NatsOptions.from_url(self.url))

        async def answer(msg: Message) -> None:
            self.received = True
            await asyncio.sleep(self.delay)
            await msg.respond(b"pong")

        await nc.subscribe(self.subject, cb=answer)
        await nc.flush()
        self._test_loop.call_soon_threadsafe(self.ready.set)
        await self._finish.wait()
        await nc.close()

    def stop(self) -> None:
        if self._loop is not None and self._finish is not None:
            self._loop.call_soon_threadsafe(self._finish.set)
        self.join(timeout=5)


def stall(seconds: float) -> None:
    """Block the event loop, as a GC pause, a swap storm or SIGSTOP would."""
    time.sleep(seconds)


async def test_an_owner_whose_ack_was_lost_answers_with_the_stored_write(nats_server: NatsServer) -> None:
    """The ack of a turn's state write is held: the caller gets the stored result, not `unavailable`."""
    client = await connect(NatsOptions.from_url(nats_server.url))
    async with FaultProxy(nats_server.url) as proxy:
        nc = await through(proxy)
        runtime = Runtime(nc, AGENTS)
        await runtime.start()
        try:
            caller = MeshClient(client, default_timeout=20)
            assert await caller.call("counter", "held", {"add": 1}) == {"value": 1}
            held = proxy.hold_after(state_write_marker("counter", "held"))
            adding = asyncio.create_task(caller.call("counter", "held", {"add": 1}))
            async with asyncio.timeout(10):
                await held.wait()
            resent = proxy.hold_after(state_write_marker("counter", "held"))
            async with asyncio.timeout(10):
                await resent.wait()  # the owner's ack wait ran out: it settles, same write
            proxy.release()
            assert await adding == {"value": 2}
            assert await caller.state("counter", "held") == {"value": 2}
            assert await caller.call("counter", "held", {"add": 1}) == {"value": 3}  # kept serving, in memory
        finally:
            await runtime.stop(grace=2)
            await nc.close()
            await client.close()


async def test_an_unsettled_write_is_outcome_unknown_and_a_retry_with_its_id_gets_the_original_reply(
    nats_server: NatsServer,
) -> None:
    client = await connect(NatsOptions.from_url(nats_server.url))
    async with FaultProxy(nats_server.url) as proxy:
        nc = await through(proxy)
        runtime = Runtime(nc, AGENTS)
        await runtime.start()
        try:
            caller = MeshClient(client, default_timeout=30)
            assert await caller.call("counter", "lost", {"add": 1}) == {"value": 1}
            activation = runtime.activations["counter.lost"]
            held = proxy.hold_after(state_write_marker("counter", "lost"), partition=True)
            # The owner's write is stored, then its link goes silent both ways: it cannot find out.
            adding = asyncio.create_task(caller.call("counter", "lost", {"add": 1}, request_id="add-2"))
            async with asyncio.timeout(10):
                await held.wait()
            await eventually(lambda: activation.status is Status.PENDING, timeout=15)  # outcome_unknown, reload
            proxy.release()
            # MeshClient retried with the same id: the owner reloaded and answers the original reply.
            assert await adding == {"value": 2}
            assert await caller.state("counter", "lost") == {"value": 2}  # applied once
            assert await caller.call("counter", "lost", {"add": 1}, request_id="add-2") == {"value": 2}
            assert await caller.call("counter", "lost", {"add": 1}) == {"value": 3}
        finally:
            await runtime.stop(grace=2)
            await nc.close()
            await client.close()
