"""A local stand-in for an LLM endpoint: answers every completion after a fixed delay.

It speaks just enough HTTP/1.1 (`POST /v1/chat/completions`, one request per connection) for the
`slow` scenario, and counts the requests it holds at once: its peak is the number of turns that
were waiting on "the model" at the same time.
"""

from __future__ import annotations

import asyncio

import orjson

_REPLY = orjson.dumps(
    {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    }
)


class StubModel:
    """`async with StubModel(delay=1.0) as model:` serves on `model.url` until the block ends."""

    def __init__(self, delay: float = 1.0) -> None:
        self.delay = delay
        self.in_flight = 0
        self.peak = 0
        self.served = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/v1/chat/completions"

    def reset(self) -> None:
        self.peak = self.in_flight
        self.served = 0

    async def __aenter__(self) -> StubModel:
        # A deep backlog: a thousand turns connect at once, and a dropped SYN costs a 1 s retry.
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.in_flight -= 1
            self.served += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(_REPLY), _REPLY)
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


async def complete(url: str, prompt: str) -> str:
    """POST one chat completion to `url` and return the reply text (a minimal HTTP/1.1 client)."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    body = orjson.dumps({"model": "stub", "messages": [{"role": "user", "content": prompt}]})
    reader, writer = await asyncio.open_connection(host, int(port or 80))
    try:
        writer.write(
            b"POST /%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), hostport.encode(), len(body), body)
        )
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    status = response.split(b" ", 2)[1] if response.startswith(b"HTTP/") else b"?"
    if status != b"200":
        raise RuntimeError(f"stub model answered {status.decode(errors='replace')}")
    reply = orjson.loads(response.split(b"\r\n\r\n", 1)[1])
    return str(reply["choices"][0]["message"]["content"])
