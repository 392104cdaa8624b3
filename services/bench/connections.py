"""1,000 open connections on one bridge: `python -m services.bench.connections [--connections N]`.

On a scratch nats-server it starts one `mesh worker` (the `room` demo) and one `mesh http`
bridge, opens N WebSockets to `/agents/room/bench/connect` from this process (64 handshakes at
a time: each waits for its `on_connect` turn), then says M lines in the room (`POST
/agents/room/bench`, one at a time) and times how long each takes to reach every connection.
It prints the connect rate, the bridge's and the worker's memory with N connections open, and the
fan-out latency (one line to all N: p50, p99 of the last connection's arrival), then closes every
connection and times how long until the room holds none. Figures, not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

from mesh.bus import NatsServer, free_port
from services.bench.procs import Child, service_env, start_worker


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


async def run(connections: int, lines: int, workdir: Path) -> dict[str, Any]:
    async with NatsServer(workdir / "nats") as server:
        worker = await start_worker(server.url, "services.demo_live:Room", workdir / "worker.log")
        port = free_port()
        bridge = Child(["services.cli", "http", "--http", f"127.0.0.1:{port}"], workdir / "bridge.log", service_env(server.url))
        base, ws_base = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
        clients: list[websockets.ClientConnection] = []
        try:
            while await asyncio.to_thread(_get, f"{base}/healthz") != 200:
                bridge.check_alive()
                await asyncio.sleep(0.1)
            idle_bridge = bridge.memory_mb()[0]
            gate = asyncio.Semaphore(64)

            async def open_one(n: int) -> websockets.ClientConnection:
                async with gate:
                    return await websockets.connect(f"{ws_base}/agents/room/bench/connect?name=c{n}", open_timeout=120)

            started = time.perf_counter()
            clients = list(await asyncio.gather(*(open_one(n) for n in range(connections))))
            open_seconds = time.perf_counter() - started
            held_bridge, held_worker = bridge.memory_mb()[0], worker.memory_mb()[0]

            latencies: list[float] = []
            for n in range(lines):
                text = f"line {n}"
                sent = time.perf_counter()
                arrivals = asyncio.gather(*(_until(ws, text) for ws in clients))
                await asyncio.to_thread(_post, f"{base}/agents/room/bench", {"from": "bench", "text": text})
                await arrivals
                latencies.append(time.perf_counter() - sent)

            started = time.perf_counter()
            await asyncio.gather(*(ws.close() for ws in clients))
            clients = []
            while True:  # until the room's on_close has run for every connection
                said = await asyncio.to_thread(_post, f"{base}/agents/room/bench", {"from": "bench", "text": "anyone?"})
                if not said["delivered"]:
                    break
                await asyncio.sleep(0.05)
            close_seconds = time.perf_counter() - started
            return {
                "connections": connections,
                "open_seconds": round(open_seconds, 2),
                "opened_per_second": round(connections / open_seconds, 1),
                "bridge_rss_mb_idle": round(idle_bridge, 1),
                "bridge_rss_mb_held": round(held_bridge, 1),
                "bridge_kb_per_connection": round((held_bridge - idle_bridge) * 1024 / connections, 1),
                "worker_rss_mb_held": round(held_worker, 1),
                "fanout_ms_p50": round(statistics.median(latencies) * 1000, 1),
                "fanout_ms_p99": round(sorted(latencies)[max(0, int(len(latencies) * 0.99) - 1)] * 1000, 1),
                "close_all_seconds": round(close_seconds, 2),
            }
        finally:
            await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
            bridge.stop()
            worker.stop()


async def _until(ws: websockets.ClientConnection, text: str) -> None:
    async for message in ws:
        if json.loads(message).get("text") == text:
            return


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.bench.connections", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=20, help="lines said in the room, each timed to every connection")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mesh-bench-conn-") as workdir:
        figures = asyncio.run(run(args.connections, args.lines, Path(workdir)))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
