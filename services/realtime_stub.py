"""The offline realtime model: a local WebSocket server that speaks the OpenAI realtime event protocol.

    async with RealtimeStub() as stub:
        session = await RealtimeRunner(agent).run(model_config={"url": stub.url, "headers": {}, ...})

With no `OPENAI_API_KEY` (and no `MESH_REALTIME_URL`), the bridge points the SDK's realtime session
at one of these, so a phone call works offline. It behaves like the real service in the ways a
call depends on, and it is plainly a demo in every word it says:

- `session.created` on connect; `session.update` merges the session and answers `session.updated`.
- Server VAD on `input_audio_buffer.append` (g711 mu-law, 8 kHz): a 20 ms frame louder than
  `SPEECH_LEVEL` starts speech (`input_audio_buffer.speech_started`); `SILENCE_MS` of quiet ends
  it (`speech_stopped`, `committed`, `conversation.item.added` for the user's audio item, then
  `conversation.item.input_audio_transcription.completed`). It cannot hear words: the transcript
  is the next of `CALLER_LINES`, marked as the offline demo's.
- A response (after an utterance, on `response.create`, after a tool's output): `response.created`,
  the output item, `response.output_audio.delta` (a tone, as long as the words would take) with
  `response.output_audio_transcript.delta`, the `.done` events and `response.done`. After an
  utterance, a session that has tools first calls its first tool (every required argument filled
  with what the caller "said"), and answers with the tool's output once it arrives.
- Every event carries an `event_id`; tests validate them with the SDK's own server-event adapter.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import math
from collections.abc import AsyncIterator
from typing import Any

import orjson
import structlog
import websockets
from websockets.asyncio.server import Server, ServerConnection, serve

log = structlog.get_logger("services.realtime_stub")

RATE = 8000  # g711 mu-law: 8 kHz, one byte a sample
FRAME = 160  # 20 ms
SPEECH_LEVEL = 1000  # mean absolute sample value (of 32767) above which a frame is speech
SILENCE_MS = 400
LABEL = "(offline demo)"
CALLER_LINES = ("What is the capital of France?", "What is 12 * 7?", "Thank you, goodbye.")


def _decode_table() -> list[int]:
    """Magnitude of each mu-law byte (G.711), for the VAD."""
    table = []
    for byte in range(256):
        value = ~byte & 0xFF
        exponent = (value >> 4) & 0x07
        mantissa = value & 0x0F
        table.append(((mantissa << 3) + 0x84) << exponent)
    return [v - 0x84 for v in table]


MAGNITUDE = _decode_table()


def mulaw(sample: int) -> int:
    """One linear 16-bit sample as a mu-law byte (G.711)."""
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), 32635) + 0x84
    exponent = 7
    for bit in range(7, -1, -1):
        if sample & (1 << (bit + 7)):
            exponent = bit
            break
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def tone(seconds: float, frequency: float = 330.0, level: int = 6000) -> bytes:
    """A sine tone in mu-law: what the stub 'says', and what a test caller sends as speech."""
    count = int(seconds * RATE)
    return bytes(mulaw(int(level * math.sin(2 * math.pi * frequency * n / RATE))) for n in range(count))


def silence(seconds: float) -> bytes:
    return bytes([0xFF]) * int(seconds * RATE)


def is_speech(frame: bytes) -> bool:
    return bool(frame) and sum(MAGNITUDE[b] for b in frame) / len(frame) > SPEECH_LEVEL


class StubSession:
    """One connection to the stub: one realtime session."""

    def __init__(self, ws: ServerConnection, ids: itertools.count[int]) -> None:
        self.ws = ws
        self._ids = ids
        self.session: dict[str, Any] = {"type": "realtime", "object": "realtime.session", "model": "offline-demo"}
        self.items: list[dict[str, Any]] = []
        self.pending = bytearray()  # input audio not yet cut into 20 ms frames
        self.audio_ms = 0
        self.speaking = False
        self.quiet_ms = 0
        self.speech_item: str | None = None
        self.speech_start = 0
        self.lines = itertools.cycle(CALLER_LINES)
        self.heard: str | None = None  # what the caller last "said", until answered
        self.tool_called = False

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", self.new_id("event"))
        await self.ws.send(orjson.dumps(event).decode())

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self.session})
        async for message in self.ws:
            try:
                event = orjson.loads(message)
            except orjson.JSONDecodeError:
                await self.error("invalid_json", "the message is not JSON")
                continue
            if not isinstance(event, dict):
                await self.error("invalid_event", "an event is a JSON object")
                continue
            await self.handle(event)

    async def error(self, code: str, message: str, event_id: str | None = None) -> None:
        await self.send(
            {"type": "error", "error": {"type": "invalid_request_error", "code": code, "message": message, "event_id": event_id}}
        )

    async def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session.update":
            update = event.get("session") or {}
            self.session.update({k: v for k, v in update.items() if v is not None})
            self.session["type"] = "realtime"
            await self.send({"type": "session.updated", "session": self.session})
        elif kind == "input_audio_buffer.append":
            await self.hear(base64.b64decode(event.get("audio") or ""))
        elif kind == "input_audio_buffer.commit":
            await self.end_speech()
        elif kind == "input_audio_buffer.clear":
            self.pending.clear()
            await self.send({"type": "input_audio_buffer.cleared"})
        elif kind == "conversation.item.create":
            await self.add_item(event.get("item") or {}, event.get("previous_item_id"))
        elif kind == "conversation.item.retrieve":
            found = next((i for i in self.items if i.get("id") == event.get("item_id")), None)
            if found is not None:
                await self.send({"type": "conversation.item.retrieved", "item": found})
        elif kind == "response.create":
            await self.respond()
        elif kind in ("response.cancel", "conversation.item.truncate", "conversation.item.delete"):
            pass  # responses are sent whole at once: there is never one left to cancel or cut
        else:
            await self.error("unknown_event", f"the offline stub does not handle {str(kind)[:60]!r}", event.get("event_id"))

    # -- the caller's audio: server VAD ---------------------------------------------------------

    async def hear(self, audio: bytes) -> None:
        self.pending.extend(audio)
        while len(self.pending) >= FRAME:
            frame = bytes(self.pending[:FRAME])
            del self.pending[:FRAME]
            self.audio_ms += 20
            if is_speech(frame):
                self.quiet_ms = 0
                if not self.speaking:
                    self.speaking = True
                    self.speech_start = self.audio_ms - 20
                    self.speech_item = self.new_id("item")
                    await self.send(
                        {
                            "type": "input_audio_buffer.speech_started",
                            "audio_start_ms": self.speech_start,
                            "item_id": self.speech_item,
                        }
                    )
            elif self.speaking:
                self.quiet_ms += 20
                if self.quiet_ms >= SILENCE_MS:
                    await self.end_speech()

    async def end_speech(self) -> None:
        if not self.speaking or self.speech_item is None:
            return
        self.speaking = False
        item_id, spoken = self.speech_item, self.audio_ms - self.quiet_ms - self.speech_start
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": self.audio_ms, "item_id": item_id})
        previous = self.items[-1]["id"] if self.items else None
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self.items.append(item)
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        self.heard = next(self.lines)
        self.tool_called = False
        transcript = f"{LABEL} [{spoken / 1000:.1f} s of caller audio] {self.heard}"
        item["content"][0]["transcript"] = transcript
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id,
                "content_index": 0,
                "transcript": transcript,
                "usage": {"type": "duration", "seconds": spoken / 1000},
            }
        )
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})
        detection = ((self.session.get("audio") or {}).get("input") or {}).get("turn_detection") or {}
        if detection.get("create_response", True):
            await self.respond()

    async def add_item(self, item: dict[str, Any], previous: str | None) -> None:
        item = {**item, "id": item.get("id") or self.new_id("item"), "object": "realtime.item", "status": "completed"}
        self.items.append(item)
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})

    # -- responses -------------------------------------------------------------------------------

    async def respond(self) -> None:
        last = self.items[-1] if self.items else None
        tools = [t for t in self.session.get("tools") or [] if t.get("type", "function") == "function"]
        if last is not None and last.get("type") == "function_call_output":
            await self.speak(f"{LABEL} Here is what I found: {_summary(last.get('output'))}")
            self.heard = None
        elif self.heard is not None and tools and not self.tool_called:
            self.tool_called = True
            await self.call_tool(tools[0], self.heard)
        elif self.heard is not None:
            heard, self.heard = self.heard, None
            await self.speak(f"{LABEL} You asked: {heard} I am the offline demo model and cannot answer that myself.")
        else:
            await self.speak(f"{LABEL} Hello, you have reached an agent-mesh voice agent. Ask me a question.")

    def _response(self, response_id: str, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        response: dict[str, Any] = {
            "id": response_id,
            "object": "realtime.response",
            "status": status,
            "output": output,
            "conversation_id": "conv_offline",
            "output_modalities": ["audio"],
        }
        if status != "in_progress":
            response["usage"] = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        return response

    async def speak(self, text: str) -> None:
        response_id, item_id = self.new_id("resp"), self.new_id("item")
        common = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        previous = self.items[-1]["id"] if self.items else None
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        await self.send({"type": "response.created", "response": self._response(response_id, "in_progress", [])})
        await self.send({"type": "response.output_item.added", "response_id": response_id, "output_index": 0, "item": item})
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        part = {"type": "audio", "transcript": ""}
        await self.send({"type": "response.content_part.added", **common, "part": part})
        words = text.split()
        audio = tone(min(3.0, max(0.6, 0.25 * len(words))))
        chunk = max(FRAME, len(audio) // max(1, len(words)))
        for index, start in enumerate(range(0, len(audio), chunk)):
            delta = base64.b64encode(audio[start : start + chunk]).decode()
            await self.send({"type": "response.output_audio.delta", **common, "delta": delta})
            if index < len(words):
                spoken = words[index] if index == 0 else " " + words[index]
                await self.send({"type": "response.output_audio_transcript.delta", **common, "delta": spoken})
        for index in range(len(range(0, len(audio), chunk)), len(words)):
            await self.send({"type": "response.output_audio_transcript.delta", **common, "delta": " " + words[index]})
        await self.send({"type": "response.output_audio.done", **common})
        await self.send({"type": "response.output_audio_transcript.done", **common, "transcript": text})
        done_part = {"type": "audio", "transcript": text}
        await self.send({"type": "response.content_part.done", **common, "part": done_part})
        item = {**item, "status": "completed", "content": [{"type": "output_audio", "transcript": text}]}
        self.items.append(item)
        await self.send({"type": "response.output_item.done", "response_id": response_id, "output_index": 0, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})
        await self.send({"type": "response.done", "response": self._response(response_id, "completed", [item])})

    async def call_tool(self, tool: dict[str, Any], heard: str) -> None:
        response_id, item_id, call_id = self.new_id("resp"), self.new_id("item"), self.new_id("call")
        parameters = tool.get("parameters") or {}
        arguments = orjson.dumps({name: heard for name in parameters.get("required") or []}).decode()
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": tool.get("name", ""),
            "call_id": call_id,
            "arguments": "",
        }
        previous = self.items[-1]["id"] if self.items else None
        await self.send({"type": "response.created", "response": self._response(response_id, "in_progress", [])})
        await self.send({"type": "response.output_item.added", "response_id": response_id, "output_index": 0, "item": item})
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        common = {"response_id": response_id, "item_id": item_id, "output_index": 0, "call_id": call_id}
        await self.send({"type": "response.function_call_arguments.delta", **common, "delta": arguments})
        done = {"type": "response.function_call_arguments.done", **common, "name": item["name"], "arguments": arguments}
        await self.send(done)
        item = {**item, "status": "completed", "arguments": arguments}
        self.items.append(item)
        await self.send({"type": "response.output_item.done", "response_id": response_id, "output_index": 0, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})
        await self.send({"type": "response.done", "response": self._response(response_id, "completed", [item])})


def _summary(output: Any) -> str:
    """A tool's output as words: an LLM agent's reply by its `output`, anything else as text."""
    if isinstance(output, str):
        try:
            decoded = orjson.loads(output)
        except orjson.JSONDecodeError:
            decoded = output
    else:
        decoded = output
    if isinstance(decoded, dict) and isinstance(decoded.get("output"), str):
        decoded = decoded["output"]
    text = decoded if isinstance(decoded, str) else orjson.dumps(decoded).decode()
    return text[:300]


class RealtimeStub:
    """A running stub server: `async with RealtimeStub() as stub: stub.url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: Server | None = None
        self._ids = itertools.count(1)
        self.sessions = 0

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime?model=offline-demo"

    async def __aenter__(self) -> RealtimeStub:
        self._server = await serve(self._handle, self.host, self.port, max_size=8 * 1024 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("realtime_stub.started", url=self.url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, ws: ServerConnection) -> None:
        self.sessions += 1
        with contextlib.suppress(websockets.ConnectionClosed):
            await StubSession(ws, self._ids).run()


@contextlib.asynccontextmanager
async def open_stub(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[RealtimeStub]:
    async with RealtimeStub(host, port) as stub:
        yield stub


async def _serve(host: str, port: int) -> None:
    async with RealtimeStub(host, port) as stub:
        print(f"offline realtime model at {stub.url}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    """`python -m services.realtime_stub --port 8765`: serve the stub alone (MESH_REALTIME_URL=ws://...)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
