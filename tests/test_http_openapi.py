"""`mesh up` serves the bridge by default; schemathesis fuzzes it through /openapi.json."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mesh.bus import free_port

TESTS = Path(__file__).parent
ROOT = TESTS.parent


@pytest.fixture(scope="module")
def mesh_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mesh up` process (embedded nats-server, worker, HTTP bridge); yields the bridge URL.

    One for the module: starting it is most of what these tests cost, and neither test depends on
    what the other left in it."""
    tmp_path = tmp_path_factory.mktemp("mesh-up")
    http_port = free_port()
    env = {
        **os.environ,
        "MESH_APP": "http_agents:SCHEMA_AGENTS",
        "OPENAI_API_KEY": "",  # the LLM agents run on the offline demo model
        "OPENAI_BASE_URL": "",
        "MESH_MODEL": "",
        "MESH_LOG_FORMAT": "json",
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("NATS_URL", None)
    log = open(tmp_path / "mesh-up.log", "wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "up",
            "--nats-port",
            str(free_port()),
            "--store",
            str(tmp_path / "store"),
            "--http",
            f"127.0.0.1:{http_port}",
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mesh up did not serve HTTP:\n{(tmp_path / 'mesh-up.log').read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(20) == 0, (tmp_path / "mesh-up.log").read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()


def test_mesh_up_serves_the_bridge_and_the_curl_example_works(mesh_up: str) -> None:
    # curl -X POST localhost:8080/agents/counter/web -d '{"add": 2}'  (curl's default form content type)
    response = httpx.post(
        f"{mesh_up}/agents/counter/web", content=b'{"add": 2}', headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.json() == {"value": 2}
    assert httpx.get(f"{mesh_up}/agents/counter/web/state").json()["state"] == {"value": 2}
    assert "counter" in httpx.get(f"{mesh_up}/agents/counter").json()["type"]
    assert "web" in httpx.get(f"{mesh_up}/agents/counter").json()["instances"]  # with any the fuzzer made
    doc = httpx.get(f"{mesh_up}/openapi.json").json()
    post = doc["paths"]["/agents/counter/{name}"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["properties"]["add"]["type"] == "integer"
    reset = doc["paths"]["/agents/counter/{name}/methods/reset"]["post"]  # methods are endpoints (schemathesis covers them)
    assert reset["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["value"]["type"] == "integer"
    assert "201" in doc["paths"]["/agents/{type}"]["post"]["responses"]
    assert httpx.post(f"{mesh_up}/agents/counter/web/methods/reset").json() == {"value": 0}
    assert "text/html" in httpx.get(f"{mesh_up}/docs").headers["content-type"]


def test_schemathesis_finds_no_server_errors_and_no_schema_violations(mesh_up: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "st"),
            "run",
            f"{mesh_up}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
            "--exclude-path-regex",
            "/events$",  # an endless event stream; covered by test_http_live
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "8",
            "--workers",
            "1",
            "--seed",
            "4",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or " passed" in result.stdout


def test_nested_request_models_get_their_definitions_in_components() -> None:
    from pydantic import BaseModel, TypeAdapter

    from services.http.bridge import AgentType
    from services.http.openapi import build_openapi

    class Line(BaseModel):
        sku: str

    class Order(BaseModel):
        lines: list[Line]

    doc = build_openapi([AgentType("orders", ["w1"], "", TypeAdapter(Order).json_schema(), None)], auth=True)
    schema = doc["paths"]["/agents/orders/{name}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["lines"]["items"] == {"$ref": "#/components/schemas/orders_request_Line"}
    assert doc["components"]["schemas"]["orders_request_Line"]["properties"]["sku"]["type"] == "string"
    assert doc["security"] == [{"bearer": []}]
