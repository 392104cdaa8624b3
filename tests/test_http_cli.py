"""`mesh http` (here as `python -m services.http`) serves the bridge alone against any NATS URL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx

from mesh.bus import free_port
from services.demo import Counter


async def test_mesh_http_serves_alone_against_a_nats_url_and_stops_on_sigterm(nats_server, mesh_factory, tmp_path) -> None:
    await mesh_factory([Counter])
    port = free_port()
    env = {**os.environ, "NATS_URL": nats_server.url, "MESH_HTTP_TOKENS": "cli-token", "MESH_LOG_FORMAT": "json"}
    log = await asyncio.to_thread(open, tmp_path / "http.log", "wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.http",
        "--http",
        f"127.0.0.1:{port}",
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
            assert (await http.post("/agents/counter/cli", json={"add": 1})).status_code == 401
            reply = await http.post("/agents/counter/cli", json={"add": 1}, headers={"Authorization": "Bearer cli-token"})
            assert reply.json() == {"value": 1}
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()
    assert "bridge.started" in (tmp_path / "http.log").read_text()
