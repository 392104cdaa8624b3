"""A local OpenAI-compatible server (`POST /v1/chat/completions`) for tests: no network, real client.

It plays a tiny rule-based LLM: offered `transfer_to_*` tools, it routes history questions to the
History Tutor and math questions to the Math Tutor; as a tutor (recognised by its system prompt) it
answers. It speaks both the plain JSON and the streaming (server-sent events) forms, and records
every request body so tests can assert on what the real `openai` client sent.

A streamed text answer comes in two deltas; between them the stub waits for `hold` (set unless a
test clears it), so a test can prove a client saw the first delta before the answer was complete.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any


class ChatCompletionsStub:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.hold = asyncio.Event()
        self.hold.set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> ChatCompletionsStub:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection (the reply says `connection: close`)."""
        try:
            request_line = await reader.readline()
            if not request_line:
                return
            method, path, _ = request_line.decode().split(" ", 2)
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method != "POST" or path != "/v1/chat/completions":
                await self._write(writer, 404, "application/json", b'{"error": {"message": "not found"}}')
                return
            payload = json.loads(body)
            self.requests.append(payload)
            message = self.answer(payload)
            if payload.get("stream"):
                first, rest = _sse(payload["model"], message)
                await self._write(writer, 200, "text/event-stream", first + rest, split=len(first), hold=self.hold)
            else:
                await self._write(writer, 200, "application/json", json.dumps(_completion(payload["model"], message)).encode())
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes,
        split: int | None = None,
        hold: asyncio.Event | None = None,
    ) -> None:
        """Write the response; with `split`, the rest of `body` only once `hold` is set."""
        head = (
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        cut = len(body) if split is None else split
        writer.write(head.encode() + body[:cut])
        await writer.drain()
        if cut < len(body):
            if hold is not None:
                await hold.wait()
            writer.write(body[cut:])
            await writer.drain()

    def answer(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The assistant message this 'LLM' answers: a tool call or text."""
        messages = payload.get("messages", [])
        system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
        user = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        tools = [t["function"]["name"] for t in payload.get("tools", [])]
        if "transfer_to_history_tutor" in tools:
            target = "transfer_to_math_tutor" if re.search(r"\d|math", user) else "transfer_to_history_tutor"
            return {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{len(self.requests)}",
                        "type": "function",
                        "function": {"name": target, "arguments": "{}"},
                    }
                ],
            }
        if "historical" in system:
            return {"role": "assistant", "content": "Stub LLM, history: Paris is the capital of France."}
        if "math" in system:
            return {"role": "assistant", "content": "Stub LLM, math: 12 * 7 = 84."}
        return {"role": "assistant", "content": "Stub LLM: hello."}


def _completion(model: str, message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def _sse(model: str, message: dict[str, Any]) -> tuple[bytes, bytes]:
    """The event stream, cut after the first text delta (all of it in the first part otherwise)."""

    def chunk(delta: dict[str, Any], finish: str | None, usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": "chatcmpl-stub",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    parts = [chunk({"role": "assistant", "content": ""}, None)]
    if message.get("tool_calls"):
        calls = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        parts.append(chunk({"tool_calls": calls}, None))
        parts.append(chunk({}, "tool_calls"))
        cut = len(parts) + 2
    else:
        text = message["content"]
        half = len(text) // 2
        parts += [chunk({"content": text[:half]}, None), chunk({"content": text[half:]}, None), chunk({}, "stop")]
        cut = 2
    parts.append(chunk({}, None, {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}))
    parts.append("data: [DONE]\n\n")
    return "".join(parts[:cut]).encode(), "".join(parts[cut:]).encode()
