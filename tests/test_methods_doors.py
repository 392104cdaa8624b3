"""`@mesh.method`s reached from every client, fresh unique instances, and `MeshClient.connect(url)`:
a real nats-server, in-process workers, a real uvicorn bridge, the real `mesh` command."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import orjson
import pytest
import websockets

from mesh import MeshClient, bus
from mesh.errors import MethodNotFound, SchemaMismatch
from services.catalog import group
from services.demo import Counter, Echo

TESTS = Path(__file__).parent
ROOT = TESTS.parent


@pytest.fixture
async def counters(mesh_factory):
    return await mesh_factory([Counter, Echo])


async def mesh_cli(url: str, *args: str) -> tuple[int, str, str]:
    """Run the real `mesh` command (python -m services.cli) against `url`."""
    env = {**os.environ, "NATS_URL": url, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_reset_works_through_the_mesh_client_and_unknown_methods_are_method_not_found(counters, nats_server) -> None:
    async with await MeshClient.connect(nats_server.url) as client:  # a plain URL is enough
        assert await client.call("counter", "m", {"add": 5}) == {"value": 5}
        assert await client.call("counter", "m", method="reset") == {"value": 0}
        assert await client.call("counter", "m", {"add": 2}) == {"value": 2}
        for name in ("nope", "on_request", "_private", "a.b", "x\r\ny"):
            with pytest.raises(MethodNotFound):
                await client.call("counter", "m", method=name)
        with pytest.raises(SchemaMismatch):
            await client.call("counter", "m", {"add": "x"})
        assert await client.state("counter", "m") == {"value": 2}


async def test_methods_are_endpoints_with_their_schemas_in_srv_info(counters, mesh_client) -> None:
    (counter,) = [t for t in group(await mesh_client.services()) if t.type == "counter"]
    assert counter.request_schema is not None and counter.request_schema["properties"]["add"]["type"] == "integer"
    reset = counter.methods["reset"]
    assert reset.request_schema is None  # reset takes no payload
    assert reset.reply_schema is not None and reset.reply_schema["properties"]["value"]["type"] == "integer"
    assert "0" in reset.description
    infos = [i for i in await mesh_client.services() if i["name"] == "counter"]
    endpoints = {e["name"]: e for e in infos[0]["endpoints"]}
    assert endpoints["reset"]["subject"] == endpoints["request"]["subject"] == "agents.counter.*"
    assert endpoints["reset"]["metadata"]["mesh.method"] == "reset"


async def test_new_names_are_unique_and_valid() -> None:
    names = {MeshClient.new_name("counter") for _ in range(1000)}
    assert len(names) == 1000
    assert all(len(n) == 32 for n in names)


async def test_reset_over_http_and_the_websocket_and_post_agents_type_makes_distinct_instances(counters, http_factory) -> None:
    bridge = await http_factory(timeout=5.0)
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        first = await http.post("/agents/counter")
        second = await http.post("/agents/counter")
        assert first.status_code == second.status_code == 201
        a, b = first.json(), second.json()
        assert a["type"] == b["type"] == "counter" and a["name"] != b["name"]
        assert first.headers["location"] == f"/agents/counter/{a['name']}"
        assert (await http.post(first.headers["location"], json={"add": 3})).json() == {"value": 3}
        assert (await http.post(second.headers["location"], json={"add": 4})).json() == {"value": 4}
        assert (await http.post(f"{first.headers['location']}/methods/reset")).json() == {"value": 0}
        assert (await http.get(f"{second.headers['location']}/state")).json()["state"] == {"value": 4}

        missing = await http.post(f"{first.headers['location']}/methods/nope")
        assert missing.status_code == 404 and missing.json()["code"] == "method_not_found"
        unmarked = await http.post(f"{first.headers['location']}/methods/on_request", json={"add": 1})
        assert unmarked.status_code == 404 and unmarked.json()["code"] == "method_not_found"
        unknown = await http.post("/agents/nosuchtype")
        assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"

        name = a["name"]
        await http.post(f"/agents/counter/{name}", json={"add": 9})
        async with websockets.connect(f"{bridge.ws_url}/agents/counter/{name}/ws") as ws:
            await ws.send(orjson.dumps({"type": "request", "id": 1, "body": None, "method": "reset"}).decode())
            await ws.send(orjson.dumps({"type": "request", "id": 2, "body": None, "method": "nope"}).decode())
            answers = {}
            async with asyncio.timeout(10):
                while len(answers) < 2:
                    message = orjson.loads(await ws.recv())
                    if message["type"] in ("reply", "error"):
                        answers[message["id"]] = message
        assert answers[1] == {"type": "reply", "id": 1, "body": {"value": 0}}
        assert answers[2]["type"] == "error" and answers[2]["problem"]["code"] == "method_not_found"


async def test_reset_and_new_from_the_cli(counters, nats_server) -> None:
    code, out, _ = await mesh_cli(nats_server.url, "call", "counter/cli", '{"add": 7}')
    assert (code, orjson.loads(out)) == (0, {"value": 7})
    code, out, _ = await mesh_cli(nats_server.url, "call", "counter/cli", "--method", "reset")
    assert (code, orjson.loads(out)) == (0, {"value": 0})
    nope, new, no_type = await asyncio.gather(  # independent: at once (each process mostly imports)
        mesh_cli(nats_server.url, "call", "counter/cli", "--method", "nope"),
        mesh_cli(nats_server.url, "new", "counter"),
        mesh_cli(nats_server.url, "new", "nosuchtype"),
    )
    code, _, err = nope
    assert code == 1 and "[method_not_found]" in err
    code, out, _ = new
    name = out.strip()
    assert code == 0 and len(name) == 32
    code, _, err = no_type
    assert code == 1 and "no worker serves" in err
    async with await MeshClient.connect(bus.NatsOptions.from_url(nats_server.url)) as client:
        assert await client.call("counter", name, {"add": 1}) == {"value": 1}


def test_openapi_lists_each_method_with_its_schemas_and_the_create_route() -> None:
    from pydantic import BaseModel, TypeAdapter

    from services.catalog import AgentType, MethodInfo
    from services.http.openapi import build_openapi

    class Line(BaseModel):
        sku: str

    class Order(BaseModel):
        lines: list[Line]

    methods = {
        "cancel": MethodInfo("cancel", None, TypeAdapter(Order).json_schema(), "Cancel it."),
        "amend": MethodInfo("amend", TypeAdapter(Order).json_schema(), None, ""),
    }
    doc = build_openapi([AgentType("orders", ["w1"], "", None, None, methods)], auth=False)
    cancel = doc["paths"]["/agents/orders/{name}/methods/cancel"]["post"]
    assert "requestBody" not in cancel and cancel["description"] == "Cancel it."
    reply = cancel["responses"]["200"]["content"]["application/json"]["schema"]
    assert reply["properties"]["lines"]["items"] == {"$ref": "#/components/schemas/orders_cancel_reply_Line"}
    amend = doc["paths"]["/agents/orders/{name}/methods/amend"]["post"]
    assert amend["requestBody"]["content"]["application/json"]["schema"]["properties"]["lines"]["type"] == "array"
    create = doc["paths"]["/agents/{type}"]["post"]
    assert create["responses"]["201"]["headers"]["Location"]["schema"] == {"type": "string"}
