"""The baselines of the `http` and `mail` scenarios: the least a hand-written front door does.

Run as its own process by `mesh bench`:

- `python -m services.bench.raw_fronts http NATS_URL PORT`: a Starlette app on uvicorn whose single
  route `POST /agents/{type}/{name}` makes the same NATS request as the HTTP bridge
  (`nc.request("agents.<type>.<name>", body)`) and returns the reply body. Served like the bridge
  (same uvicorn settings, a TCP_NODELAY socket) so that only the bridge's own work differs.
- `python -m services.bench.raw_fronts smtp NATS_URL PORT`: an aiosmtpd server (same SMTP settings
  as the mail service) whose handler only publishes each message to the JetStream stream
  `mesh_bench_raw_mail` and answers 250 once JetStream acknowledged it.

Both log one line `ready` on stdout when they serve.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from typing import Any

import nats
from aiosmtpd.smtp import SMTP, Envelope, Session
from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.bench import names


def http_app(nc: Client) -> Starlette:
    async def call(request: Request) -> Response:
        subject = f"agents.{request.path_params['type']}.{request.path_params['name']}"
        msg = await nc.request(subject, await request.body(), timeout=30.0)
        return Response(msg.data, media_type="application/json")

    return Starlette(routes=[Route("/agents/{type}/{name}", call, methods=["POST"])])


async def serve_http(nc: Client, port: int, stop: asyncio.Event) -> None:
    import uvicorn

    from services.http.server import EmbeddedServer

    app = http_app(nc)
    server = EmbeddedServer(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
        ),
        app,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.02)
    print("ready", flush=True)
    await stop.wait()
    server.should_exit = True
    await task


class StoreOnly:
    """The whole baseline handler: one stream publish per mail, then 250."""

    def __init__(self, nc: Client) -> None:
        self.js = nc.jetstream()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        raw = envelope.original_content
        assert isinstance(raw, bytes)
        await self.js.publish(names.RAW_MAIL_SUBJECT, raw, stream=names.RAW_MAIL_STREAM)
        return "250 2.0.0 Stored"


async def serve_smtp(nc: Client, port: int, stop: asyncio.Event) -> None:
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=names.RAW_MAIL_STREAM,
            subjects=[names.RAW_MAIL_SUBJECT],
            storage=StorageType.FILE,
        )
    )
    handler = StoreOnly(nc)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            loop=loop,
            data_size_limit=10 * 1024 * 1024,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname="localhost",
            ident="bench baseline",
        ),
        "127.0.0.1",
        port,
    )
    print("ready", flush=True)
    await stop.wait()
    server.close()


async def main_async(kind: str, url: str, port: int) -> None:
    nc = await nats.connect(url, name=f"mesh-bench-raw-{kind}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serve: Any = {"http": serve_http, "smtp": serve_smtp}[kind]
    try:
        await serve(nc, port, stop)
    finally:
        await nc.drain()


def main(argv: list[str]) -> int:
    asyncio.run(main_async(argv[0], argv[1], int(argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
