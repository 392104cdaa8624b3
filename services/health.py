"""The operations port of a mesh process: `/metrics`, `/healthz` and `/readyz` for orchestrators.

A tiny HTTP/1.1 server on the process's own event loop (no thread, no framework): it answers one
GET per connection and closes it. `/healthz` answers 200 while the event loop runs (a stuck loop
cannot answer, which is what a liveness probe should notice); `/readyz` answers 200 only while the
`ready` callback says the process can do its work (connected, started, lease held), else 503.
Anything else gets a short error status, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import structlog
from prometheus_client.registry import Collector

from mesh import metrics
from mesh.errors import MeshError

log = structlog.get_logger("mesh.health")

MAX_HEAD = 8192
READ_TIMEOUT = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    """Serves the operations endpoints on `host:port` (port 0 picks a free one, see `.port`)."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool] = lambda: True) -> None:
        self.host = host
        self.port = port
        self.ready = ready
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics.serving", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, content_type, body = await self._respond(reader)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        text = "text/plain; charset=utf-8"
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
            return 400, text, b"bad request\n"
        if len(head) > MAX_HEAD:
            return 400, text, b"bad request\n"
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, text, b"bad request\n"
        method, path = parts[0], parts[1].split(b"?", 1)[0]
        if path not in (b"/metrics", b"/healthz", b"/readyz"):
            return 404, text, b"not found\n"
        if method not in (b"GET", b"HEAD"):
            return 405, text, b"method not allowed\n"
        if path == b"/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", metrics.render()
        if path == b"/healthz":
            return 200, text, b"ok\n"
        try:
            ready = self.ready()
        except Exception:
            ready = False
        return (200, text, b"ready\n") if ready else (503, text, b"not ready\n")


@contextlib.asynccontextmanager
async def open_health_server(
    host: str, port: int | None, ready: Callable[[], bool] = lambda: True, collector: Collector | None = None
) -> AsyncIterator[HealthServer | None]:
    """Serve the operations endpoints for the duration of the block; nothing when `port` is None.

    Every process the `mesh` command runs wraps its serving in this (`mesh worker`, `mesh up`,
    `mesh http`, `mesh smtp`): `async with open_health_server(s.metrics_host, s.metrics_port, ready=...):`.
    `collector` (e.g. a `RuntimeCollector`) is registered for the same duration.
    """
    if port is None:
        yield None
        return
    server = HealthServer(host, port, ready=ready)
    try:
        await server.start()
    except OSError as exc:
        raise MeshError(f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}") from exc
    if collector is not None:
        metrics.REGISTRY.register(collector)
    try:
        yield server
    finally:
        if collector is not None:
            metrics.REGISTRY.unregister(collector)
        await server.stop()
