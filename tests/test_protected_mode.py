"""Protected mode: the bridge refuses to serve a non-loopback address without a bearer token, unless
`--insecure` says so (then it warns). The real `mesh` command, as child processes.

The `--insecure` case has to bind a non-loopback address (0.0.0.0, a free port) to show that it
serves; it stops as soon as the bridge answered once.
"""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest
from mesh_up import MESH, ROOT, free_port, run_mesh

from mesh.testing import eventually
from services.http.config import BridgeConfig, exposure_problem, is_loopback


@pytest.fixture
def env(nats_server) -> dict[str, str]:
    found = {**os.environ, "PYTHONPATH": str(ROOT), "NATS_URL": nats_server.url, "MESH_LOG_FORMAT": "json"}
    for name in ("MESH_HTTP_TOKENS", "MESH_HTTP_TOKENS_FILE", "MESH_HTTP_INSECURE"):
        found.pop(name, None)
    return found


def test_only_loopback_addresses_count_as_private() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.com", "my-laptop"):
        assert not is_loopback(host), host
    assert exposure_problem(BridgeConfig(host="0.0.0.0")) is not None
    assert exposure_problem(BridgeConfig(host="0.0.0.0", tokens=("t",))) is None
    assert exposure_problem(BridgeConfig(host="127.0.0.1")) is None


async def test_mesh_http_and_mesh_up_refuse_an_open_non_loopback_bridge(env, tmp_path) -> None:
    port = free_port()
    refused = await run_mesh("http", "--http", f"0.0.0.0:{port}", env=env)
    assert refused.returncode == 2
    assert "refusing to serve the HTTP bridge on 0.0.0.0" in refused.stderr and "--insecure" in refused.stderr
    assert "MESH_HTTP_TOKENS" in refused.stderr
    up_env = {**env, "MESH_STORE": str(tmp_path / "store"), "MESH_SMTP_LISTEN": "off"}
    up_env.pop("NATS_URL")
    up = await run_mesh("up", "--nats-port", str(free_port()), "--http", f"0.0.0.0:{port}", env=up_env)
    assert up.returncode == 2 and "refusing to serve the HTTP bridge" in up.stderr
    assert not (tmp_path / "store").exists()  # refused before anything started


async def test_insecure_serves_the_open_bridge_and_warns_at_start(env) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *MESH,
        "http",
        "--http",
        f"0.0.0.0:{port}",
        "--insecure",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def serves() -> bool:
                return (await http.get("/healthz")).status_code == 200

            await eventually(serves, timeout=30, retry=(httpx.TransportError,))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            out, _ = await process.communicate()
    assert process.returncode == 0
    warning = next(line for line in out.decode().splitlines() if '"http.insecure"' in line)
    assert '"level": "warning"' in warning and f"0.0.0.0:{port}" in warning


async def test_a_token_is_enough_to_serve_a_non_loopback_address(env) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *MESH,
        "http",
        "--http",
        f"0.0.0.0:{port}",
        env={**env, "MESH_HTTP_TOKENS": "s3cret"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def guarded() -> bool:
                return (await http.get("/agents")).status_code == 401

            await eventually(guarded, timeout=30, retry=(httpx.TransportError,))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            out, _ = await process.communicate()
    assert process.returncode == 0
    assert b"http.insecure" not in out
