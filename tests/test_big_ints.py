"""JSON integers beyond 64 bits: refused with `schema_mismatch` by every door, the same way.

orjson (the bridge, the CLI, the WebSocket) would read such a number as a float and lose digits,
while pydantic (the worker) keeps it exact: one body, two meanings. The worker's request decode
refuses it (`mesh.wire.check_integers`), and the doors pass bodies on as they came so that the
worker is the one that decides. Integers inside the range, and digits inside strings, still run.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import orjson
import pytest
import websockets

from mesh import SchemaMismatch, subjects, wire
from services.demo import Counter, Echo

ROOT = Path(__file__).parent.parent
TOO_BIG = 2**64  # one past the largest integer orjson reads exactly
TOO_SMALL = -(2**63) - 1


def body(value: int) -> bytes:
    return b'{"add": ' + str(value).encode() + b"}"


@pytest.fixture
async def runtime(mesh_factory):
    return await mesh_factory([Counter, Echo])


def test_the_check_refuses_only_integers_outside_the_range() -> None:
    fine = (b'{"add": 18446744073709551615}', b"-9223372036854775808", b'"123456789012345678901234567890"')
    for data in (*fine, b"1.2345678901234567890123e5"):
        wire.check_integers(data)
    for big in (body(TOO_BIG), body(TOO_SMALL), b'[1, {"deep": [99999999999999999999]}]', b"1" + b"0" * 5000):
        with pytest.raises(SchemaMismatch):
            wire.check_integers(big)
    wire.check_integers(b"not JSON 123456789012345678901234")  # left to the decoder, which says bad_json
    padding = b'{"pad": "' + b"x" * 100 + b'", "n": '  # a long body is scanned another way: same answers
    wire.check_integers(padding + b'"123456789012345678901"}')
    with pytest.raises(SchemaMismatch):
        wire.check_integers(padding + b"123456789012345678901}")


async def test_the_bus_refuses_them_and_keeps_the_state_untouched(runtime, mesh_client) -> None:
    subject = subjects.agent_subject("counter", "b")
    assert await mesh_client.call("counter", "b", {"add": 1}) == {"value": 1}
    for value in (TOO_BIG, TOO_SMALL):
        with pytest.raises(SchemaMismatch, match="64-bit"):
            await mesh_client.call_raw(subject, body(value))
    with pytest.raises(SchemaMismatch):  # a method's payload too, even one that takes none
        await mesh_client.call_raw(subject, body(TOO_BIG), headers={subjects.HEADER_METHOD: "reset"})
    assert await mesh_client.state("counter", "b") == {"value": 1}
    largest = 2**63 - 1  # in range: runs (the counter's int holds it)
    assert await mesh_client.call_raw(subject, body(largest)) == orjson.dumps({"value": largest + 1})
    assert await mesh_client.call("echo", "e", "123456789012345678901234567890") == "123456789012345678901234567890"


async def test_http_and_websocket_refuse_them_with_the_same_code(runtime, http_factory, mesh_client) -> None:
    bridge = await http_factory()
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        response = await http.post("/agents/counter/h", content=body(TOO_BIG), headers={"content-type": "application/json"})
        assert response.status_code == 422 and response.json()["code"] == "schema_mismatch", response.text
        assert (await http.post("/agents/counter/h", json={"add": 2})).json() == {"value": 2}
    async with websockets.connect(f"{bridge.ws_url}/agents/counter/h/ws") as ws:
        await ws.send('{"type": "request", "id": "1", "body": ' + body(TOO_BIG).decode() + "}")
        async with asyncio.timeout(10):
            while (message := orjson.loads(await ws.recv()))["type"] not in ("reply", "error"):
                pass
        assert message["type"] == "error" and message["problem"]["code"] == "schema_mismatch", message
    assert await mesh_client.state("counter", "h") == {"value": 2}


async def test_the_cli_sends_the_payload_as_typed_and_reports_the_workers_code(runtime, nats_server) -> None:
    env = {**os.environ, "NATS_URL": nats_server.url, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "call",
        "counter/c",
        body(TOO_BIG).decode(),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1 and b"[schema_mismatch]" in err, (out, err)


async def test_an_llm_agent_refuses_them_instead_of_failing(mesh_factory, mesh_client) -> None:
    from llm_apps import Recall

    await mesh_factory([Recall])
    items = b'[{"role": "user", "content": "hello", "extra": ' + str(TOO_BIG).encode() + b"}]"
    with pytest.raises(SchemaMismatch):
        await mesh_client.call_raw(subjects.agent_subject("recall", "r"), items)
    reply = await mesh_client.call("recall", "r", "hello")
    assert "hello" in str(reply)
