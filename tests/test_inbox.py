"""The hot-path NATS plumbing: the shared reply inbox and batched publishing, against a real server."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from mesh import bus
from mesh._nats.inbox import SWEEP, inbox_of
from mesh.bus import NatsServer, publish_now
from mesh.errors import ConnectionFailed, MeshTimeout, NoResponders, PayloadTooLarge, RequestError


async def test_concurrent_requests_get_their_own_replies_and_timeouts_fire(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:

        async def echo(msg: nats.aio.msg.Msg) -> None:
            if msg.data != b"silent":
                await msg.respond(msg.data + b"!" + (msg.headers or {}).get("X-Tag", "").encode())

        await nc.subscribe("svc.echo", cb=echo)
        replies = await asyncio.gather(
            *(bus.request(nc, "svc.echo", str(i).encode(), timeout=5, headers={"X-Tag": f"t{i}"}) for i in range(200))
        )
        assert [r.data for r in replies] == [f"{i}!t{i}".encode() for i in range(200)]

        with pytest.raises(NoResponders):
            await bus.request(nc, "svc.nobody", b"", timeout=5)
        for timeout in (0.2, 1.0):  # a timer of its own, then the shared sweep
            started = time.monotonic()
            with pytest.raises(MeshTimeout):
                await bus.request(nc, "svc.echo", b"silent", timeout=timeout)
            assert time.monotonic() - started >= timeout
        await asyncio.sleep(SWEEP * 3)
        assert inbox_of(nc)._waiting == {}  # nothing left behind, and the sweep has stopped
        assert inbox_of(nc)._sweeper is None
    finally:
        await nc.close()


async def test_publish_now_sends_every_message_in_order_with_headers(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        sub = await nc.subscribe("ev.>")
        await nc.flush()
        traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        assert publish_now(nc, "ev.a", b"1", {"traceparent": traceparent})
        assert publish_now(nc, "ev.b", b"", reply="ev.back")
        with pytest.raises(PayloadTooLarge):
            publish_now(nc, "ev.big", b"x" * (nc.max_payload + 1))
        for bad in ({"Bad Name": "x"}, {"A:B": "x"}, {"A": "x\r\nPUB ev.injected 1"}):
            with pytest.raises(RequestError):
                publish_now(nc, "ev.bad", b"", bad)
        assert publish_now(nc, "ev.c", b'{"k":3}', {"A": "x", "B": "y z"})
        got = [await sub.next_msg(timeout=2) for _ in range(3)]  # no flush needed: the flusher was woken
        assert [(m.subject, m.data) for m in got] == [("ev.a", b"1"), ("ev.b", b""), ("ev.c", b'{"k":3}')]
        assert got[0].headers == {"traceparent": traceparent}
        assert got[1].reply == "ev.back" and not got[1].headers
        assert got[2].headers == {"A": "x", "B": "y z"}
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.3)  # nothing refused went out
    finally:
        await nc.close()
    with pytest.raises(ConnectionFailed):
        publish_now(nc, "ev.a", b"1")
