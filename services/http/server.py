"""Serving the bridge with uvicorn, alone (`mesh http`) or inside another process (`mesh up`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator

import uvicorn
from starlette.applications import Starlette

from mesh import bus
from services.http.app import create_app
from services.http.bridge import Bridge
from services.http.config import BridgeConfig


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process, and ends the bridge's
    live streams when it shuts down (uvicorn would wait `timeout_graceful_shutdown` for them)."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        bridge: Bridge | None = getattr(self.app.state, "bridge", None)  # None: its lifespan never started
        if bridge is not None:
            bridge.end_streams()
        await super().shutdown(sockets)


def build_server(config: BridgeConfig, nats: bus.NatsOptions) -> EmbeddedServer:
    app = create_app(config, nats=nats)
    return EmbeddedServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            ws="websockets-sansio",
            timeout_graceful_shutdown=3,
            ws_ping_interval=20.0,
        ),
        app,
    )


async def serve_http(config: BridgeConfig, nats: bus.NatsOptions, stop: asyncio.Event) -> None:
    """Serve until `stop` is set; raises if the port cannot be bound."""
    server = build_server(config, nats)
    # Bound here so a busy port is an exception, not uvicorn's sys.exit. proto=IPPROTO_TCP matters:
    # asyncio only sets TCP_NODELAY on sockets that say they are TCP, and without it every
    # keep-alive response waited ~40 ms for a delayed ACK (measured: 22 req/s instead of ~1000).
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((config.host, config.port))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    waiter = asyncio.get_running_loop().create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        waiter.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
        sock.close()
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
