"""Metrics, health endpoints, the flight recorder (`mesh tail`, `mesh history`) and OpenTelemetry export."""

import asyncio
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from core_agents import AGENTS
from prometheus_client.parser import text_string_to_metric_families

from mesh import MeshClient, NatsServer, Runtime
from mesh.bus import NatsOptions, connect, free_port
from mesh.errors import AgentError
from mesh.metrics import EVENTS_DROPPED
from mesh.observe import TurnRecord
from mesh.recorder import FlightRecorder
from services.health import HealthServer

ROOT = Path(__file__).parent.parent
ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "MESH_LEASE_TTL": "3"}


def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(port: int) -> dict:
    status, text = await asyncio.to_thread(http_get, port, "/metrics")
    assert status == 200
    return samples(text)


async def test_worker_metrics_move_with_requests_and_probes_answer(nats_server, worker_factory) -> None:
    port = free_port()
    await worker_factory(nats_server.url, "core_agents", {**ENV, "MESH_METRICS_PORT": str(port)})
    client = MeshClient(await connect(NatsOptions.from_url(nats_server.url)), default_timeout=10)
    try:
        ok = ("mesh_turns_total", (("outcome", "ok"), ("type", "counter")))
        latency = ("mesh_turn_duration_seconds_count", (("type", "counter"),))
        before = await scrape(port)
        assert before.get(ok, 0) == 0 and before.get(latency, 0) == 0
        for i in range(5):
            await client.call("counter", f"m{i % 2}", {"add": 1})
        with pytest.raises(AgentError):
            await client.call("faulty", "f", {"action": "raise"})
        after = await scrape(port)
        assert after[ok] == 5
        assert after[latency] == 5 and after[("mesh_turn_duration_seconds_sum", (("type", "counter"),))] > 0
        assert after[("mesh_turns_total", (("outcome", "handler_error"), ("type", "faulty")))] == 1
        assert after[("mesh_state_size_bytes_count", (("type", "counter"),))] == 5
        assert after[("mesh_instances_owned", ())] == 3  # m0, m1, f
        assert ("process_resident_memory_bytes", ()) in after

        assert await asyncio.to_thread(http_get, port, "/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(http_get, port, "/readyz") == (200, "ready\n")
        assert (await asyncio.to_thread(http_get, port, "/nope"))[0] == 404
        assert (await asyncio.to_thread(http_get, port, "/metrics", "POST"))[0] == 405

        def garbage() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
                return sock.recv(100)

        assert (await asyncio.to_thread(garbage)).startswith(b"HTTP/1.1 400")
        assert (await scrape(port))[ok] == 5  # still serving after bad input
    finally:
        await client.close()


async def test_readiness_follows_the_callback() -> None:
    state = {"ready": False}

    def ready() -> bool:
        if state["ready"] is None:
            raise RuntimeError("probe failed")
        return state["ready"]

    async with HealthServer("127.0.0.1", 0, ready=ready) as server:
        assert await asyncio.to_thread(http_get, server.port, "/readyz") == (503, "not ready\n")
        state["ready"] = True
        assert (await asyncio.to_thread(http_get, server.port, "/readyz"))[0] == 200
        state["ready"] = None
        assert (await asyncio.to_thread(http_get, server.port, "/readyz"))[0] == 503
        assert (await asyncio.to_thread(http_get, server.port, "/healthz"))[0] == 200


async def run_mesh(*args: str, url: str, timeout: float = 30) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env={**os.environ, "NATS_URL": url, **ENV},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, out.decode(), err.decode()


async def test_tail_links_a_request_across_two_agents_and_history_survives_a_restart(tmp_path, worker_factory) -> None:
    store = tmp_path / "store"
    server = NatsServer(store)
    await server.start()
    try:
        workers = [await worker_factory(server.url, "core_agents", ENV) for _ in range(2)]
        tail = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "tail",
            "hop",
            "--json",
            "--count",
            "5",
            env={**os.environ, "NATS_URL": server.url, **ENV},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert b"following events.hop.>" in await asyncio.wait_for(tail.stderr.readline(), 30)
        client = MeshClient(await connect(NatsOptions.from_url(server.url)), default_timeout=10)
        reply = await client.call("hop", "a", {"path": ["hop/b"]})
        trace = reply["trail"][0]["trace"]
        assert reply["trail"][1]["trace"] == trace
        await client.close()

        out, _ = await asyncio.wait_for(tail.communicate(), 30)
        assert tail.returncode == 0
        events = [json.loads(line) for line in out.decode().splitlines()]
        seen = {(e["name"], e["kind"]) for e in events}
        assert seen == {("a", "turn"), ("b", "turn"), ("a", "call"), ("a", "state"), ("b", "state")}, events
        turns = {e["name"]: e for e in events if e["kind"] == "turn"}
        calls = [e for e in events if e["kind"] == "call"]
        assert turns["a"]["trace_id"] == turns["b"]["trace_id"] == calls[0]["trace_id"] == trace
        assert turns["b"]["data"]["caller"] == "hop/a" and calls[0]["data"]["to"] == "hop/b"

        for worker in workers:
            assert await worker.terminate() == 0
        server.stop()
        server = NatsServer(store, port=server.port)
        await server.start()

        # Read-only commands, run at once (each process mostly imports).
        a, b, never, bad_tail, bad_history = await asyncio.gather(
            run_mesh("history", "hop/a", url=server.url),
            run_mesh("history", "hop/b", "--json", url=server.url),
            run_mesh("history", "hop/never", url=server.url),
            run_mesh("tail", "Bad/x", url=server.url),
            run_mesh("history", "hop", url=server.url),
        )
        code, out, err = a
        assert code == 0, err
        lines = out.splitlines()
        assert [line.split()[1:3] for line in lines] == [["hop/a", "turn"], ["hop/a", "call"], ["hop/a", "state"]]
        assert f"trace={trace}" in lines[0] and "-> hop/b ok" in lines[1] and "revision=" in lines[2]
        code, out, _ = b
        assert code == 0 and json.loads(out.splitlines()[0])["data"]["caller"] == "hop/a"
        assert never[0:2] == (1, "")
        code, _, err = bad_tail
        assert code == 1 and "[name_invalid]" in err
        code, _, err = bad_history
        assert code == 1 and "[name_invalid]" in err
    finally:
        server.stop()


async def test_failed_turns_are_error_events(nats_server) -> None:
    nc = await connect(NatsOptions.from_url(nats_server.url))
    recorder = FlightRecorder(nc)
    await recorder.start()
    listener = await nc.subscribe("events.faulty.>")
    async with Runtime(nc, AGENTS, observers=[recorder]) as runtime:
        with pytest.raises(AgentError):
            await runtime.client.call("faulty", "x", {"action": "raise"})
        msg = await listener.next_msg(timeout=5)
    await recorder.stop()
    event = json.loads(msg.data)
    assert msg.subject == "events.faulty.x.error"
    assert (event["outcome"], event["error"]) == ("handler_error", "RuntimeError: boom")
    assert msg.headers["traceparent"][3:35] == event["trace_id"]
    await nc.close()


async def test_the_recorder_never_waits_and_drops_the_oldest_when_full() -> None:
    recorder = FlightRecorder(nc=None, buffer=5)  # type: ignore[arg-type]  # not started: nothing publishes
    before = EVENTS_DROPPED._value.get()
    for i in range(12):
        recorder.on_turn(TurnRecord("counter", f"n{i}", "w1", "t", "00-" + "1" * 32 + "-" + "2" * 16 + "-01", 1.0, 2.0, "ok"))
    assert recorder.dropped == 7 and EVENTS_DROPPED._value.get() - before == 7
    assert [s.split(".")[2] for s, _, _ in recorder._buffer] == ["n7", "n8", "n9", "n10", "n11"]


async def test_turns_export_as_opentelemetry_spans_with_the_mesh_trace_id(nats_server) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mesh.otel import OtelObserver

    exporter = InMemorySpanExporter()
    nc = await connect(NatsOptions.from_url(nats_server.url))
    async with Runtime(nc, AGENTS, observers=[OtelObserver(SimpleSpanProcessor(exporter))]) as runtime:
        reply = await runtime.client.call("hop", "a", {"path": ["hop/b"]})
    await nc.close()
    spans = {span.attributes["mesh.name"]: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"a", "b"}
    trace = int(reply["trail"][0]["trace"], 16)
    assert spans["a"].context.trace_id == spans["b"].context.trace_id == trace
    assert spans["a"].name == "hop turn" and spans["b"].attributes["mesh.caller"] == "hop.a"
    assert spans["b"].start_time >= spans["a"].start_time and spans["b"].end_time <= spans["a"].end_time


async def test_a_busy_metrics_port_is_a_clear_error(nats_server) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run_mesh("worker", "--metrics-port", str(port), url=nats_server.url)
    assert code == 1 and f"cannot serve /metrics on 127.0.0.1:{port}" in err
