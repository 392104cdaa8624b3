"""The fault injector itself (mesh.faults): the proxy stalls, holds and cuts; pauses stop a process;
the history's verdict catches what it should."""

import asyncio
import os
import sys
from pathlib import Path

import pytest

from mesh import MeshClient
from mesh.bus import NatsOptions, connect
from mesh.errors import MeshError
from mesh.faults import (
    Call,
    Direction,
    FaultProxy,
    History,
    owner_of,
    owner_pid,
    pause_for,
    percentile,
    run_load,
    state_write_marker,
)
from mesh.testing import eventually

TESTS = Path(__file__).parent
WORKER_ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]), "MESH_LEASE_TTL": "3"}


async def echo_server() -> tuple[asyncio.Server, list[bytes]]:
    """An upstream that records what reaches it and echoes it back."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                received.append(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, received


async def nothing_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if `reader` yields no byte for `seconds` (how a held direction looks from outside)."""
    try:
        await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return True
    return False


async def test_a_stalled_direction_holds_its_bytes_with_the_socket_open_and_release_sends_them_in_order() -> None:
    upstream, received = await echo_server()
    port = upstream.sockets[0].getsockname()[1]
    async with upstream, FaultProxy(f"127.0.0.1:{port}") as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"one ")
            assert await reader.readexactly(4) == b"one "

            proxy.stall(Direction.TO_SERVER)
            writer.write(b"two ")
            writer.write(b"three ")
            await writer.drain()  # the client's writes succeed: the proxy reads them
            await eventually(lambda: proxy.held(Direction.TO_SERVER) == 10)
            assert await nothing_within(reader, 0.3)
            assert b"".join(received) == b"one "

            proxy.stall(Direction.TO_CLIENT)
            proxy.release(Direction.TO_SERVER)
            await eventually(lambda: b"".join(received) == b"one two three ")
            await eventually(lambda: proxy.held(Direction.TO_CLIENT) == 10)  # the echo, held
            assert await nothing_within(reader, 0.3)

            proxy.release()
            assert await reader.readexactly(10) == b"two three "
            assert proxy.connections == 1
        finally:
            writer.close()
            await writer.wait_closed()


async def test_hold_after_passes_the_marked_bytes_to_the_server_and_holds_its_answers() -> None:
    upstream, received = await echo_server()
    port = upstream.sockets[0].getsockname()[1]
    async with upstream, FaultProxy(f"127.0.0.1:{port}") as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            held = proxy.hold_after(b"MARK")
            writer.write(b"before ")
            assert await reader.readexactly(7) == b"before "
            writer.write(b"xxMA")  # the pattern split over two writes is still found
            assert await reader.readexactly(4) == b"xxMA"
            writer.write(b"RK!")
            async with asyncio.timeout(5):
                await held.wait()
            await eventually(lambda: b"".join(received).endswith(b"MARK!"))  # reached the server
            assert not proxy.flowing(Direction.TO_CLIENT) and proxy.flowing(Direction.TO_SERVER)
            assert await nothing_within(reader, 0.3)  # its answer is held

            proxy.release()
            assert await reader.readexactly(3) == b"RK!"
        finally:
            writer.close()
            await writer.wait_closed()


async def test_hold_after_with_partition_holds_what_the_client_sends_next() -> None:
    upstream, received = await echo_server()
    port = upstream.sockets[0].getsockname()[1]
    async with upstream, FaultProxy(f"127.0.0.1:{port}") as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            held = proxy.hold_after(b"MARK", partition=True)
            writer.write(b"MARK")
            async with asyncio.timeout(5):
                await held.wait()
            await eventually(lambda: b"".join(received) == b"MARK")
            writer.write(b"later")
            await eventually(lambda: proxy.held(Direction.TO_SERVER) == 5)
            assert b"".join(received) == b"MARK"
            proxy.release()
            assert await reader.readexactly(9) == b"MARKlater"
        finally:
            writer.close()
            await writer.wait_closed()


async def test_cut_resets_the_connection_and_the_next_one_is_accepted() -> None:
    upstream, _ = await echo_server()
    port = upstream.sockets[0].getsockname()[1]
    async with upstream, FaultProxy(f"127.0.0.1:{port}") as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            await proxy.cut()
            async with asyncio.timeout(5):
                try:
                    assert await reader.read() == b""
                except ConnectionResetError:
                    pass
        finally:
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"again")
            assert await reader.readexactly(5) == b"again"
            assert proxy.connections == 2
        finally:
            writer.close()
            await writer.wait_closed()


async def test_a_worker_behind_the_proxy_serves_is_partitioned_and_its_state_write_ack_can_be_held(
    nats_server, worker_factory
) -> None:
    async with FaultProxy(nats_server.url) as proxy:
        worker = await worker_factory(proxy.url, "core_agents", WORKER_ENV)
        client = MeshClient(await connect(NatsOptions.from_url(nats_server.url)), default_timeout=10)
        try:
            assert await client.call("counter", "h", {"add": 1}) == {"value": 1}
            assert await owner_pid(client.nc, "counter", "h") == worker.process.pid
            assert (await owner_of(client.nc, "counter", "h") or "").startswith("w")

            proxy.stall()
            with pytest.raises(MeshError) as caught:
                await client.call("echo", "e", "lost in the link", timeout=0.5)
            assert caught.value.code in ("timeout", "outcome_unknown")
            proxy.release()
            assert await client.call("echo", "e", "through") == "through"

            held = proxy.hold_after(state_write_marker("counter", "h"))
            call = asyncio.create_task(client.call("counter", "h", {"add": 1}, timeout=10))
            async with asyncio.timeout(10):
                await held.wait()
            await eventually(lambda: client.state("counter", "h"), timeout=5)
            assert await client.state("counter", "h") == {"value": 2}  # stored ...
            assert not call.done()  # ... and not acknowledged: the ack is held
            proxy.release()
            assert await call == {"value": 2}
        finally:
            await client.close()
            await worker.terminate()  # while its link still works, so it stops gracefully


async def test_pause_for_stops_the_process_and_always_continues_it() -> None:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")

    def state() -> str:
        return Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    try:
        pause = asyncio.create_task(pause_for(process.pid, 0.5))
        await eventually(lambda: state() == "T", timeout=5)
        measured = await pause
        assert state() != "T"
        assert 0.5 <= measured.seconds < 1.5

        cancelled = asyncio.create_task(pause_for(process.pid, 30))
        await eventually(lambda: state() == "T", timeout=5)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert state() != "T"  # continued though the pause was cut short
    finally:
        process.kill()
        await process.wait()


def counter_calls(instance: str, values: list[int | None], codes: list[str | None]) -> list[Call]:
    return [Call(instance, i, i + 0.1, v, c) for i, (v, c) in enumerate(zip(values, codes, strict=True))]


def test_the_verdict_accepts_a_sound_history_and_names_each_kind_of_violation() -> None:
    sound = History()
    for call in counter_calls("a", [1, 2, None, 4, None], [None, None, "outcome_unknown", None, "unavailable"]):
        sound.add(call)
    assert sound.problems({"a": 4}) == []  # the unknown one took effect, the unavailable one did not
    assert sound.problems({"a": 3}) != []  # 4 was acknowledged and then lost

    twice = History()
    for call in counter_calls("a", [1, 2, 2], [None, None, None]):
        twice.add(call)
    assert any("twice" in p for p in twice.problems({"a": 3}))

    lied = History()
    for call in counter_calls("a", [1, None, 3], [None, "unavailable", None]):
        lied.add(call)
    assert any("reported unknown" in p for p in lied.problems({"a": 3}))  # "unavailable" took effect
    with pytest.raises(AssertionError, match="reported unknown"):
        lied.assert_counters({"a": 3})

    assert percentile([], 99) == 0.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


async def test_run_load_spreads_calls_until_stopped_and_records_every_outcome() -> None:
    counters: dict[str, int] = {}
    history = History()
    stop = asyncio.Event()

    async def add_one(instance: str) -> int:
        await asyncio.sleep(0)
        counters[instance] = counters.get(instance, 0) + 1
        if counters[instance] % 7 == 0:
            raise MeshError("a definite failure")  # pretend: not applied
        return counters[instance]

    load = asyncio.create_task(run_load(add_one, ["a", "b", "c"], history, stop, callers=4))
    await eventually(lambda: len(history.calls) >= 200)
    stop.set()
    await load
    assert set(history.instances()) == {"a", "b", "c"}
    assert history.codes()["mesh_error"] > 0
    assert history.problems(counters) != []  # the failures were applied: the verdict must say so
