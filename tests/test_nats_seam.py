"""The NATS seam (`mesh._nats`) against a real nats-server: the fast publish path's backpressure,
the self-check's public-API fallbacks, the mapping of every NATS/JetStream error the mesh meets, and
no nats-py task dying on the way."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors as jse
import orjson
import pytest
import pytest_asyncio
import structlog.testing
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StreamConfig

from mesh import bus
from mesh._nats import headers, selfcheck
from mesh._nats.errors import map_error
from mesh._nats.inbox import inbox_of
from mesh._nats.inline import _Inline
from mesh.errors import (
    ConnectionFailed,
    MeshError,
    MeshTimeout,
    NameInvalid,
    NoResponders,
    NotStored,
    PayloadTooLarge,
    RequestError,
    StateConflict,
    Unavailable,
)
from mesh.faults import FaultProxy
from mesh.recorder import FlightRecorder
from mesh.testing import eventually


@pytest_asyncio.fixture
async def nc(nats_server: bus.NatsServer) -> AsyncIterator[bus.Connection]:
    conn = await bus.connect(bus.NatsOptions.from_url(nats_server.url, name="seam-test"))
    try:
        yield conn
    finally:
        await conn.close()


class Warnings:
    """Stands in for the self-check's logger: what it warned about, whatever structlog's set-up."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})


@pytest.fixture
def fresh_selfcheck(monkeypatch: pytest.MonkeyPatch) -> Warnings:
    """A process state as if no connection had been checked yet (restored after the test)."""
    monkeypatch.setattr(selfcheck, "state", selfcheck.Shortcuts())
    warnings = Warnings()
    monkeypatch.setattr(selfcheck, "log", warnings)
    return warnings


async def echo_service(nc: bus.Connection, subject: str = "svc.echo") -> bus.Subscription:
    async def echo(msg: bus.Message) -> None:
        if msg.data != b"silent":
            await bus.publish(nc, msg.reply, msg.data + b"!")

    sub = await bus.subscribe(nc, subject, cb=echo)
    await nc.flush()
    return sub


# -- the fast publish path ------------------------------------------------------------------------


async def test_publish_now_never_grows_the_buffer_past_the_pending_limit_and_publish_waits_for_a_flush(
    nc: bus.Connection,
) -> None:
    received: list[bytes] = []
    sub = await bus.subscribe(nc, "bp.>")
    await nc.flush()
    nc._max_pending_size = 4096  # nats-py's limit (2 MiB by default), shrunk so a few messages fill it
    payload = b"x" * 1000
    taken = 0
    while bus.publish_now(nc, f"bp.{taken}", payload):  # no await: the flusher cannot run meanwhile
        taken += 1
        assert nc._pending_data_size <= nc._max_pending_size
    assert 1 <= taken <= 4 and nc._pending_data_size <= nc._max_pending_size
    await bus.publish(nc, f"bp.{taken}", payload)  # over the limit: nats-py's publish waits for a flush
    assert nc._pending_data_size == 0  # it waited until the flusher had written everything
    for _ in range(taken + 1):
        msg = await bus.next_message(sub, 5)
        assert msg is not None
        received.append(msg.subject.encode())
    assert received == [f"bp.{i}".encode() for i in range(taken + 1)]  # in order, nothing lost


async def test_publish_now_counts_its_bytes_validates_subjects_and_hands_over_when_the_flusher_is_gone(
    nc: bus.Connection,
) -> None:
    sub = await bus.subscribe(nc, "st.>")
    await nc.flush()
    msgs, out = nc.stats["out_msgs"], nc.stats["out_bytes"]
    assert bus.publish_now(nc, "st.a", b"12345", {"K": "v"})
    assert (nc.stats["out_msgs"], nc.stats["out_bytes"]) == (msgs + 1, out + 5)
    for subject, reply in (("", ""), ("st.a b", ""), ("st.a\r\nPUB x 1", ""), ("st.a", "in\tbox")):
        with pytest.raises(NameInvalid):
            bus.publish_now(nc, subject, b"", reply=reply)

    flusher = nc._flusher_task
    assert flusher is not None
    flusher.cancel()
    await asyncio.gather(flusher, return_exceptions=True)
    assert not bus.publish_now(nc, "st.b", b"after")  # nobody would write it: the caller must await
    await bus.publish(nc, "st.b", b"after")  # nats-py writes it inline
    got = [await bus.next_message(sub, 5) for _ in range(2)]
    assert [(m.subject, m.data) for m in got if m is not None] == [("st.a", b"12345"), ("st.b", b"after")]


async def test_the_flight_recorder_keeps_every_event_in_order_past_the_pending_limit(nc: bus.Connection) -> None:
    sub = await bus.subscribe(nc, "events.>")
    await nc.flush()
    recorder = FlightRecorder(nc)
    await recorder.start(create_stream=False)
    nc._max_pending_size = 2048
    for i in range(60):  # synchronously, as observers record: nats-py's flusher cannot run in between
        recorder.record("counter", "a", "note", {"i": i})
    assert nc._pending_data_size <= nc._max_pending_size and recorder._buffer  # the rest waits in the recorder
    got = [await bus.next_message(sub, 5) for _ in range(60)]
    assert [orjson.loads(m.data)["i"] for m in got if m is not None] == list(range(60))
    assert (recorder.published, recorder.dropped) == (60, 0)
    await recorder.stop()


# -- the self-check -----------------------------------------------------------------------------


async def test_a_missing_subscription_attribute_disables_the_handoff_with_one_warning_and_requests_still_work(
    nats_server: bus.NatsServer, fresh_selfcheck: Warnings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if a nats-py release had renamed the subscription's queue: the check expects a name it lacks.
    monkeypatch.setitem(selfcheck.SUBSCRIPTION, "_pending_queue_renamed", asyncio.Queue)
    conns = [await bus.connect(bus.NatsOptions.from_url(nats_server.url)) for _ in range(2)]
    try:
        await echo_service(conns[0])
        for conn in conns:  # two connections, two reply subscriptions: still one warning
            replies = await asyncio.gather(*(bus.request(conn, "svc.echo", b"%d" % i, timeout=5) for i in range(20)))
            assert [r.data for r in replies] == [b"%d!" % i for i in range(20)]
            assert not isinstance(inbox_of(conn).subscription._pending_queue, _Inline)  # type: ignore[union-attr]
        (warning,) = fresh_selfcheck.events
        assert warning["event"] == "nats.shortcut_disabled" and warning["shortcut"] == "handoff"
        assert "_pending_queue_renamed (missing)" in warning["unexpected"]
        assert selfcheck.state.handoff is False and selfcheck.state.outbox is True
    finally:
        for conn in conns:
            await conn.close()


async def test_a_missing_connection_attribute_sends_through_nats_py_publish_with_one_warning(
    nats_server: bus.NatsServer, fresh_selfcheck: Warnings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(selfcheck.CONNECTION, "_pending_renamed", list)
    conns = [await bus.connect(bus.NatsOptions.from_url(nats_server.url)) for _ in range(2)]
    try:
        (warning,) = fresh_selfcheck.events
        assert warning["event"] == "nats.shortcut_disabled" and warning["shortcut"] == "outbox"
        await echo_service(conns[0])
        assert not bus.publish_now(conns[1], "svc.echo", b"x")  # nothing queued: the caller awaits publish
        replies = await asyncio.gather(*(bus.request(conns[1], "svc.echo", b"%d" % i, timeout=5) for i in range(20)))
        assert [r.data for r in replies] == [b"%d!" % i for i in range(20)]
        assert isinstance(inbox_of(conns[1]).subscription._pending_queue, _Inline)  # type: ignore[union-attr]
    finally:
        for conn in conns:
            await conn.close()


def test_a_header_parser_that_disagrees_with_nats_py_s_is_not_installed_with_one_warning(
    fresh_selfcheck: Warnings,
) -> None:
    class Changed(Client):
        @staticmethod
        def _parse_header_lines(raw: bytes) -> dict[str, str]:  # as if a nats-py release parsed differently
            return {}

    class Gone:
        pass

    changed = Changed()
    assert not headers.install(changed) and not headers.install(Gone())
    assert "_parse_header_lines" not in vars(changed)  # nats-py's own stays in use
    (warning,) = fresh_selfcheck.events
    assert warning["event"] == "nats.shortcut_disabled" and warning["shortcut"] == "headers"
    assert warning["unexpected"] == ["_parse_header_lines (parses differently)"]


async def test_the_handoff_resolves_replies_in_the_read_loop_and_leaves_nothing_pending(nc: bus.Connection) -> None:
    await echo_service(nc)
    replies = await asyncio.gather(*(bus.request(nc, "svc.echo", b"%d" % i, timeout=5) for i in range(50)))
    assert len(replies) == 50
    sub = inbox_of(nc).subscription
    assert sub is not None and isinstance(sub._pending_queue, _Inline)
    assert (sub.delivered, sub.pending_msgs, sub.pending_bytes) == (50, 0, 0)


# -- no nats-py task dies -------------------------------------------------------------------------


async def test_no_nats_py_task_dies_with_an_unretrieved_exception_after_a_connection_is_used_and_closed(
    nats_server: bus.NatsServer,
) -> None:
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    try:
        conn = await bus.connect(bus.NatsOptions.from_url(nats_server.url))
        await echo_service(conn)
        await asyncio.gather(*(bus.request(conn, "svc.echo", b"x", timeout=5) for _ in range(10)))
        with pytest.raises(MeshTimeout):
            await bus.request(conn, "svc.echo", b"silent", timeout=0.2)
        bucket = await bus.open_bucket(conn, "seam_tasks")
        await bucket.write("k", b"1", 0)
        sub = inbox_of(conn).subscription
        assert sub is not None
        reader = sub._wait_for_msgs_task  # the subscription task the handoff leaves waiting
        assert reader is not None
        await asyncio.sleep(0.05)
        assert not reader.done()  # still waiting for a message that never comes: it did not die
        await conn.close()
        await eventually(reader.done, timeout=2)
        assert reader.cancelled() or reader.exception() is None
        del conn, sub, reader, bucket
        gc.collect()  # an unretrieved task exception is reported when the task is collected
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert reports == []


async def test_a_closed_connection_and_its_reply_inbox_are_freed(nats_server: bus.NatsServer) -> None:
    conn = await bus.connect(bus.NatsOptions.from_url(nats_server.url))
    await echo_service(conn)
    await asyncio.gather(*(bus.request(conn, "svc.echo", b"x", timeout=5) for _ in range(10)))
    bucket = await bus.open_bucket(conn, "seam_freed")
    await bucket.write("k", b"1", 0)
    gone = weakref.ref(conn)
    await conn.close()
    del conn, bucket

    def freed() -> bool:
        gc.collect()  # the connection's reference cycles (its subscriptions, their tasks) go with it
        return gone() is None

    await eventually(freed, timeout=5)


# -- error mapping, produced for real -----------------------------------------------------------


async def test_core_nats_errors_map_onto_the_mesh_tree(nats_server: bus.NatsServer, nc: bus.Connection) -> None:
    raw = await nats.connect(nats_server.url)
    try:
        await echo_service(raw)
        cases: list[tuple[Callable[[], Awaitable[Any]], type[MeshError]]] = [
            (lambda: raw.request("svc.nobody", b"", timeout=2), NoResponders),
            (lambda: raw.request("svc.echo", b"silent", timeout=0.2), MeshTimeout),
            (lambda: raw.publish("svc.big", b"x" * (raw.max_payload + 1)), PayloadTooLarge),
            (lambda: raw.publish("svc.bad", b"", headers={"Bad Name": "x"}), RequestError),
            (lambda: raw.publish("svc.a b", b""), NameInvalid),
        ]
        for call, expected in cases:
            with pytest.raises(expected):
                with bus.map_errors("test"):
                    await call()
        with pytest.raises(Unavailable):  # a JetStream-style caller: no answer means "retry"
            with bus.map_errors("test", timeout=Unavailable):
                await raw.request("svc.echo", b"silent", timeout=0.2)
    finally:
        await raw.close()
    with pytest.raises(ConnectionFailed):
        with bus.map_errors("test"):
            await raw.publish("svc.echo", b"")
    with pytest.raises(ConnectionFailed):
        bus.publish_now(raw, "svc.echo", b"")
    # The seam's own calls raise mesh errors without any mapping by the caller.
    with pytest.raises(NoResponders):
        await bus.request(nc, "svc.nobody", b"", timeout=2)
    with pytest.raises(PayloadTooLarge):
        await bus.request(nc, "svc.big", b"x" * (nc.max_payload + 1), timeout=2)


async def test_jetstream_errors_map_onto_the_mesh_tree(nc: bus.Connection) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="seam_kv", history=1, max_value_size=256))
    rev = await kv.put("a", b"1")
    await kv.put("a", b"2")
    cases: list[tuple[Callable[[], Awaitable[Any]], type[MeshError]]] = [
        (lambda: kv.update("a", b"3", last=rev), StateConflict),  # KeyWrongLastSequenceError (10071)
        (lambda: kv.create("a", b"3"), StateConflict),
        (lambda: kv.delete("a", last=rev), StateConflict),  # a plain BadRequestError with err_code 10071
        (lambda: kv.get("missing"), NotStored),
        (lambda: kv.put("a", b"x" * 300), PayloadTooLarge),  # the bucket's max_value_size (10054)
        (lambda: js.key_value("seam_none"), NotStored),
        (lambda: js.stream_info("SEAM_NONE"), NotStored),
        (lambda: js.publish("seam.nostream", b""), NoResponders),  # no stream stores the subject
        (lambda: js.add_stream(StreamConfig(name="KV_seam_kv", subjects=["other.>"])), RequestError),  # 10058
    ]
    for call, expected in cases:
        with pytest.raises(expected):
            with bus.map_errors("test", timeout=Unavailable):
                await call()
    # The seam's KV and stream operations: misses are None/False, conflicts StateConflict.
    assert await bus.bind_bucket(nc, "seam_none") is None
    bucket = await bus.open_bucket(nc, "seam_cas")
    first = await bucket.write("k", b"1", 0)
    with pytest.raises(StateConflict):
        await bucket.write("k", b"2", 0)
    with pytest.raises(StateConflict):
        await bucket.write("k", b"2", first + 100)
    assert not await bucket.delete("k", last=first + 100)
    assert await bucket.get("missing") is None
    assert await bus.find_stream(js, "seam.nostream") is None
    assert await bus.stream_subjects(js, "SEAM_NONE", ">") == {}
    assert await bus.get_stored(js, "KV_seam_cas", seq=999) is None
    assert not await bus.delete_stored(js, "KV_seam_cas", 1)  # KV streams deny deletes
    await bus.ensure_stream(js, bus.StreamConfig(name="SEAM_S", subjects=["seam.s.>"]))
    stored = await bus.store(js, "seam.s.a", b"1")
    assert (stored.stream, stored.seq, stored.duplicate) == ("SEAM_S", 1, False)
    assert await bus.delete_stored(js, "SEAM_S", 1)
    assert not await bus.delete_stored(js, "SEAM_S", 1)  # gone already
    consumer = await bus.add_pull_consumer(
        js, "KV_seam_cas", bus.ConsumerConfig(durable_name="seam_pull", ack_policy=bus.AckPolicy.EXPLICIT)
    )
    assert len(await consumer.fetch(1, timeout=1)) == 1  # the one value, then a fetch timeout is []
    assert await consumer.fetch(1, timeout=0.2) == []
    await consumer.close()


async def test_errors_of_a_connection_that_is_away_map_to_unavailable(tmp_path: Any) -> None:
    server = bus.NatsServer(tmp_path / "store")
    await server.start()
    raw = await nats.connect(server.url, pending_size=1024, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        server.stop()
        await eventually(lambda: raw.is_reconnecting, timeout=5)
        with pytest.raises(Unavailable):  # reconnecting with a full outgoing buffer
            bus.publish_now(raw, "x", b"y" * 2000)
        with pytest.raises(Unavailable):
            with bus.map_errors("test"):
                await raw.publish("x", b"y" * 2000)  # OutboundBufferLimitError
        with pytest.raises(Unavailable):
            with bus.map_errors("test"):
                await raw.drain()  # ConnectionReconnectingError
    finally:
        await raw.close()
        server.stop()
    with pytest.raises(ConnectionFailed, match="cannot connect to NATS"):
        await bus.connect(bus.NatsOptions.from_url(f"nats://127.0.0.1:{bus.free_port()}", connect_timeout=0.5))


async def test_a_connection_logs_losing_its_server_and_which_server_it_reconnected_to_but_not_its_close(
    tmp_path: Any,
) -> None:
    server = bus.NatsServer(tmp_path / "store")
    await server.start()
    with structlog.testing.capture_logs() as logs:
        nc = await bus.connect(bus.NatsOptions.from_url(server.url))
        try:
            server.kill()
            await eventually(lambda: any(e["event"] == "connection.lost" for e in logs), timeout=5)
            await server.start()  # the same port
            await eventually(lambda: any(e["event"] == "connection.restored" for e in logs), timeout=10)
        finally:
            await nc.close()
            server.stop()
    events = [(e["event"], e["server"]) for e in logs if e["event"].startswith("connection.")]
    assert events == [("connection.lost", server.url), ("connection.restored", server.url)]


async def test_a_server_that_stops_answering_with_the_socket_open_is_left_after_three_silent_pings(
    nats_server: bus.NatsServer,
) -> None:
    async with FaultProxy(nats_server.url) as proxy:
        with structlog.testing.capture_logs() as logs:
            nc = await bus.connect(bus.NatsOptions.from_url(proxy.url, ping_interval=0.2))
            try:
                assert nc.options["ping_interval"] == 0.2 and nc.options["max_outstanding_pings"] == 2
                proxy.stall()  # the link goes silent both ways; nothing closes it
                await eventually(lambda: any(e["event"] == "connection.lost" for e in logs), timeout=10)
                proxy.release()
                await eventually(lambda: any(e["event"] == "connection.restored" for e in logs), timeout=10)
                await echo_service(nc)
                assert (await bus.request(nc, "svc.echo", b"x", timeout=5)).data == b"x!"
            finally:
                await nc.close()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (nats.errors.ConnectionDrainingError(), ConnectionFailed),
        (nats.errors.NoServersError(), ConnectionFailed),
        (nats.errors.AuthorizationError(), ConnectionFailed),
        (nats.errors.SlowConsumerError("s", "r", 1, None), Unavailable),  # type: ignore[arg-type]
        (nats.errors.FlushTimeoutError(), MeshTimeout),
        (jse.ServiceUnavailableError(code=503, description="JetStream system temporarily unavailable"), Unavailable),
        (jse.ServerError(code=500, description="insufficient resources"), Unavailable),
        (jse.BadRequestError(code=400, err_code=10164, description="wrong last sequence"), StateConflict),
        (jse.NoKeysError(), NotStored),
        (jse.FetchTimeoutError(), MeshTimeout),
        (jse.InvalidKeyError(), NameInvalid),
        (ConnectionRefusedError(111, "refused"), ConnectionFailed),
        (ValueError("not from NATS"), MeshError),
    ],
)
def test_errors_hard_to_produce_on_demand_map_as_documented(exc: BaseException, expected: type[MeshError]) -> None:
    mapped = map_error(exc, "doing it")
    assert type(mapped) is expected and mapped.message.startswith("doing it: ")
    assert map_error(mapped) is mapped  # mesh errors pass through unchanged
