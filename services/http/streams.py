"""Live views of one instance: Server-Sent Events and a WebSocket, both fed by a `LiveFeed`.

SSE (`GET /agents/{type}/{name}/events`): events `state` and `event`, each with an id (the feed's
cursor) so a reconnecting `EventSource` resumes with `Last-Event-ID`; a comment line every
`heartbeat` seconds keeps idle connections open through proxies.

WebSocket (`/agents/{type}/{name}/ws`): JSON messages `{"type": "state"|"event"|"ping", ...}` from
the bridge; the client may send `{"type": "request", "id": "<any>", "body": <JSON>}` (with
`"method": "<name>"` to run a `@mesh.method` instead of `on_request`) and gets
`{"type": "reply", "id", "body"}` or `{"type": "error", "id", "problem"}` back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from mesh import subjects, wire
from mesh.errors import BadJson, MeshError, PayloadTooLarge, RequestError, Unavailable
from services.http.bridge import Bridge
from services.http.live import Cursor, LiveFeed, LiveMessage
from services.http.problems import log, problem_body


async def sse(request: Request) -> StreamingResponse:
    agent_type = subjects.check_type(request.path_params["type"])
    name = request.path_params["name"]
    subjects.encode_name(name)
    bridge: Bridge = request.app.state.bridge
    resume = Cursor.parse(request.headers.get("last-event-id") or request.query_params.get("last_event_id"))
    feed = LiveFeed(bridge, agent_type, name, resume)
    await feed.__aenter__()  # fail before the 200 if NATS cannot set the feed up
    bridge.streams.add(feed)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 2000\n\n"
            while True:
                try:
                    message = await feed.next(bridge.config.heartbeat)
                except Unavailable:  # the bridge is stopping: end the response (the client reconnects)
                    return
                if message is None:
                    yield b": ping\n\n"
                    continue
                yield b"id: %s\nevent: %s\ndata: %s\n\n" % (
                    str(message.cursor).encode(),
                    message.kind.encode(),
                    orjson.dumps(message.data),
                )
        finally:
            # On disconnect this generator is cancelled, and awaits here would be cancelled too:
            # release the feed from a task of its own so no subscription outlives the client.
            bridge.streams.discard(feed)
            bridge.spawn(feed.aclose())

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def websocket(ws: WebSocket) -> None:
    try:
        agent_type = subjects.check_type(ws.path_params["type"])
        name = ws.path_params["name"]
        subjects.encode_name(name)
    except MeshError as err:
        await ws.close(code=1008, reason=err.code)
        return
    bridge: Bridge = ws.app.state.bridge
    await ws.accept()
    lock = asyncio.Lock()

    async def send(message: dict[str, Any]) -> None:
        async with lock:
            await ws.send_text(orjson.dumps(message).decode())

    async def push(feed: LiveFeed) -> None:
        while True:
            message = await feed.next(bridge.config.heartbeat)
            await send(_ws_message(message))

    async def serve_requests() -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                text = await ws.receive_text()
                task = asyncio.get_running_loop().create_task(_answer(bridge, agent_type, name, text, send))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()

    async with LiveFeed(bridge, agent_type, name) as feed:
        loop = asyncio.get_running_loop()
        both = {loop.create_task(push(feed)), loop.create_task(serve_requests())}
        try:
            done, pending = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in both:
                task.cancel()
            await asyncio.gather(*both, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect):
                log.warning("websocket.failed", key=feed.key, error=repr(exc)[:300])


def _ws_message(message: LiveMessage | None) -> dict[str, Any]:
    if message is None:
        return {"type": "ping"}
    return {"type": message.kind, **message.data}


async def _answer(bridge: Bridge, agent_type: str, name: str, text: str, send: Any) -> None:
    request_id: Any = None
    try:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise BadJson(f"message is not valid JSON: {exc}") from exc
        wire.check_integers(text.encode())  # orjson read an integer beyond 64 bits as a float: refuse, as every door does
        if not isinstance(message, dict) or message.get("type") != "request" or "body" not in message:
            raise RequestError('messages must look like {"type": "request", "id": "...", "body": <JSON>, "method"?: "..."}')
        request_id = message.get("id")
        method = message.get("method")  # a @mesh.method to run instead of on_request
        body = orjson.dumps(message["body"])
        if len(body) > bridge.max_body:
            raise PayloadTooLarge(f"body of {len(body)} bytes is over the limit of {bridge.max_body}")
        reply = await bridge.call(agent_type, name, body, bridge.config.timeout, method=None if method is None else str(method))
        await send({"type": "reply", "id": request_id, "body": orjson.loads(reply)})
    except MeshError as err:
        await send({"type": "error", "id": request_id, "problem": problem_body(err)})
