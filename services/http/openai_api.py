"""The OpenAI-compatible API: each LLM agent type is a model, each of its instances a conversation.

    GET  /v1/models             -> the LLM agent types being served (discovery)
    GET  /v1/models/{model}     -> one of them
    POST /v1/chat/completions   -> {"op": "message", "input": <last user message>, "run_id"} on agents.<type>.<name>

`model` is `<type>` or `<type>/<name>`. Without a name the instance is the `user` field, else a
fresh one; the answer's `model` is always `<type>/<name>`, so a client continues the conversation
by sending that back. The instance's memory is the conversation: the turn receives only the last
message (a user message), and earlier messages a stateless client sends again (its system prompt,
past turns) are not replayed; the agent's own instructions, tools and models apply, and the
client's `tools`, `temperature` and other sampling fields are ignored.

`stream: true` answers `chat.completion.chunk` events built from the run's `text_delta` events,
ending with `data: [DONE]`. A run that pauses for approval answers a note naming the approval
as its text, and the extension field `mesh` (`{"type", "name", "run_id", "status", "agent",
"model", "approvals": [{"id", "tool", "arguments", "agent", "expires_at", "approve", "reject"}]}`,
on every completion) names it; decide it on the bridge's approval routes. Errors are OpenAI's
`{"error": {"message", "type", "param", "code"}}` with the mesh's status and code.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mesh import subjects
from mesh.client import MeshClient
from mesh.errors import AgentError, MeshError, RequestError
from services.http.bridge import Bridge
from services.http.errors import ModelNotFound
from services.http.llm_runs import (
    LLMReply,
    approvals_json,
    approvals_text,
    follow_run,
    llm_type,
    llm_types,
    message_body,
    new_run_id,
    reply_text,
)
from services.http.problems import PROBLEM_TYPE, problem_headers
from services.http.routes import bridge_of, read_json_body

OWNER = "agent-mesh"


class ChatInvalid(RequestError):
    """A chat completion request the mesh cannot take (`bad_request`), naming the field it is about."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_body(err: MeshError) -> dict[str, Any]:
    """`err` in OpenAI's error shape; `code` is the mesh's stable code."""
    status = err.status if 400 <= err.status <= 599 else 500
    kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    param = getattr(err, "param", "model" if isinstance(err, ModelNotFound) else None)
    return {"error": {"message": err.message, "type": kind, "param": param, "code": err.code}}


def error_response(err: MeshError) -> Response:
    status = err.status if 400 <= err.status <= 599 else 500
    return JSONResponse(error_body(err), status_code=status, headers=problem_headers(err))


def model_not_found(model: str) -> ModelNotFound:
    return ModelNotFound(
        f"The model `{model[:200]}` does not exist: models are the LLM agent types being served (GET /v1/models), "
        "as `<type>` or `<type>/<instance name>`"
    )


# -- request --------------------------------------------------------------------------------


class _Lenient(BaseModel):
    """OpenAI clients send many optional fields; the ones the mesh has no use for are ignored."""

    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatRequest(_Lenient):
    model: str = Field(min_length=1, max_length=600, description="`<type>` or `<type>/<instance name>`.")
    messages: list[ChatMessage] = Field(min_length=1, description="Only the last one, a user message, is sent.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, description="The instance name when `model` names none.")
    n: int | None = Field(default=None, ge=1, le=1, description="One choice only.")


def parse_chat(body: bytes) -> ChatRequest:
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ChatInvalid(f"{where or 'body'}: {first['msg']}", where or None) from exc


def last_user_text(messages: list[ChatMessage]) -> str:
    last = messages[-1]
    if last.role != "user":
        raise ChatInvalid(
            f"the last message must be a user message, not {last.role!r}: the agent runs its own tools, "
            "and its memory holds the conversation",
            "messages",
        )
    content = last.content
    if isinstance(content, list):
        if any(part.type != "text" or part.text is None for part in content):
            raise ChatInvalid("only text content parts are supported", "messages")
        content = "\n".join(part.text or "" for part in content)
    if not content or not content.strip():
        raise ChatInvalid("the last user message is empty", "messages")
    return content


async def resolve_model(bridge: Bridge, model: str, user: str | None) -> tuple[str, str]:
    """`model` (and `user`) as the instance `(type, name)` the turn goes to."""
    agent_type, slash, name = model.partition("/")
    if not subjects.TYPE_PATTERN.match(agent_type) or await llm_type(bridge, agent_type) is None:
        raise model_not_found(model)
    param = "model"
    if not slash:
        name, param = (user, "user") if user else (MeshClient.new_name(agent_type), "model")
    try:
        subjects.encode_name(name)
    except MeshError as err:
        raise ChatInvalid(err.message, param) from err
    return agent_type, name


# -- routes ---------------------------------------------------------------------------------


def model_entry(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": OWNER}


async def list_models(request: Request) -> Response:
    try:
        types = await llm_types(bridge_of(request))
    except MeshError as err:
        return error_response(err)
    return JSONResponse({"object": "list", "data": [model_entry(t.type) for t in types]})


async def get_model(request: Request) -> Response:
    model: str = request.path_params["model"]
    agent_type, _, _ = model.partition("/")
    try:
        found = subjects.TYPE_PATTERN.match(agent_type) and await llm_type(bridge_of(request), agent_type)
    except MeshError as err:
        return error_response(err)
    if not found:
        return error_response(model_not_found(model))
    return JSONResponse(model_entry(model))


async def chat_completions(request: Request) -> Response:
    bridge = bridge_of(request)
    try:
        chat = parse_chat(await read_json_body(request, bridge.max_body))
        agent_type, name = await resolve_model(bridge, chat.model, chat.user)
        turn = Turn(bridge, agent_type, name, last_user_text(chat.messages), chat)
        if chat.stream:
            return await turn.stream()
        return JSONResponse(await turn.complete())
    except MeshError as err:
        return error_response(err)


class Turn:
    """One chat completion: a message to the instance, its deltas (if streamed) and its reply."""

    def __init__(self, bridge: Bridge, agent_type: str, name: str, text: str, chat: ChatRequest) -> None:
        self.bridge, self.agent_type, self.name, self.chat = bridge, agent_type, name, chat
        self.run_id = new_run_id()
        self.body = message_body(text, self.run_id)
        self.id = f"chatcmpl-{self.run_id}"
        self.created = int(time.time())
        self.model = f"{agent_type}/{name}"

    async def _send(self) -> bytes:
        # A model run takes minutes, and OpenAI clients wait that long: the async runs' deadline.
        return await self.bridge.call(self.agent_type, self.name, self.body, self.bridge.config.async_timeout)

    def _items(self) -> contextlib.aclosing[AsyncGenerator[str | LLMReply, None]]:
        return contextlib.aclosing(follow_run(self.bridge, self.agent_type, self.name, self.run_id, self._send))

    async def complete(self) -> dict[str, Any]:
        deltas: list[str] = []
        reply: LLMReply | None = None
        async with self._items() as items:
            async for item in items:
                if isinstance(item, str):
                    deltas.append(item)
                else:
                    reply = item
        assert reply is not None
        streamed = "".join(deltas)
        note = self._final_text(reply, streamed)  # raises if the run failed
        # The final output, or what the run wrote before it paused and the note on its approvals.
        content = streamed + note if reply.status == "awaiting_approval" else reply_text(reply)
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop", "logprobs": None}
            ],
            "usage": usage(reply),
            "mesh": self._extension(reply),
        }

    def _final_text(self, reply: LLMReply, streamed: str) -> str:
        """What the answer says after the text already streamed (`streamed`): the final output if
        nothing was streamed, and a note naming the pending approvals if the run paused."""
        if reply.status == "failed":
            raise AgentError(f"run {reply.run_id} failed: {reply_text(reply)}")
        if reply.status == "awaiting_approval":
            return ("\n\n" if streamed else "") + approvals_text(self.agent_type, self.name, reply)
        return "" if streamed else reply_text(reply)

    def _extension(self, reply: LLMReply) -> dict[str, Any]:
        return {
            "type": self.agent_type,
            "name": self.name,
            "run_id": reply.run_id,
            "status": reply.status,
            "agent": reply.agent,
            "model": reply.model,
            "approvals": approvals_json(self.agent_type, self.name, reply),
        }

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        head = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n"

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return self._event([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra)

    async def stream(self) -> Response:
        """Server-sent chunks. The response starts with the run's first delta (or its reply), so an
        error before that (a busy instance, no worker, a timeout) is a plain error response."""
        chunks = self._chunks()
        try:
            first = await anext(chunks)
        except BaseException:
            await chunks.aclose()
            raise

        async def body() -> AsyncIterator[bytes]:
            try:
                yield first
                async for chunk in chunks:
                    yield chunk
            finally:
                await chunks.aclose()

        return StreamingResponse(
            body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        started = False
        streamed = ""
        try:
            async with self._items() as items:
                async for item in items:
                    if not started:
                        yield self._chunk({"role": "assistant", "content": ""})
                        started = True
                    if isinstance(item, str):
                        streamed += item
                        yield self._chunk({"content": item})
                        continue
                    if text := self._final_text(item, streamed):
                        yield self._chunk({"content": text})
                    yield self._chunk({}, "stop", mesh=self._extension(item))
                    if self.chat.stream_options is not None and self.chat.stream_options.include_usage:
                        yield self._event([], usage=usage(item))
                    yield b"data: [DONE]\n\n"
        except MeshError as err:
            if not started:
                raise
            yield b"data: " + orjson.dumps(error_body(err)) + b"\n\n"


def usage(reply: LLMReply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.usage.input_tokens,
        "completion_tokens": reply.usage.output_tokens,
        "total_tokens": reply.usage.total_tokens,
    }


# -- errors the bridge answers before a route runs ---------------------------------------------


class OpenAIErrors:
    """On `/v1/...`, answers the bridge's own problem documents (no valid token, no such route, wrong
    method) in OpenAI's error shape, with the same status and headers, so OpenAI clients read them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        parts: list[bytes] = []

        async def reshape(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and Headers(raw=message["headers"]).get("content-type", "").startswith(
                PROBLEM_TYPE
            ):
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _reshaped(b"".join(parts), int(held["status"]))
            headers = MutableHeaders(raw=list(held["headers"]))
            headers["content-type"] = "application/json"
            headers["content-length"] = str(len(body))
            await send({**held, "headers": headers.raw})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, reshape)


def _reshaped(problem: bytes, status: int) -> bytes:
    try:
        doc = orjson.loads(problem)
    except orjson.JSONDecodeError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    err = MeshError(str(doc.get("detail") or doc.get("title") or "error"))
    err.code = str(doc.get("code") or "error")  # type: ignore[misc]
    err.status = status  # type: ignore[misc]
    return orjson.dumps(error_body(err))


ROUTES = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
]


_ERROR = {
    "description": "an error in OpenAI's shape",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type", "code"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": "string"},
                        },
                    }
                },
            }
        }
    },
}
_MODEL = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}
_TEXT = {"type": "string", "maxLength": 4000}
_CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 600, "description": "`<type>` or `<type>/<instance name>`"},
        "messages": {
            "type": "array",
            "minItems": 1,
            "description": "only the last one, a user message, reaches the instance (its memory holds the conversation)",
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {
                    "role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
                    "content": {
                        "anyOf": [
                            _TEXT,
                            {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["type"],
                                    "properties": {"type": {"type": "string"}, "text": _TEXT},
                                },
                            },
                            {"type": "null"},
                        ]
                    },
                },
            },
        },
        "stream": {"type": "boolean"},
        "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
        "user": {"type": ["string", "null"], "maxLength": 256, "description": "the instance name when `model` names none"},
        "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 1},
    },
}
_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string", "description": "`<type>/<instance name>`: send it back to continue"},
        "choices": {"type": "array"},
        "usage": {"type": "object"},
        "mesh": {"type": "object", "description": "the run: type, name, run_id, status, agent, model, approvals"},
    },
}
OPENAPI_PATHS: dict[str, Any] = {
    "/v1/models": {
        "get": {
            "summary": "OpenAI-compatible: the LLM agent types being served, as models",
            "operationId": "listModels",
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _MODEL}},
                            }
                        }
                    },
                },
                "default": _ERROR,
            },
        }
    },
    "/v1/models/{model}": {
        "get": {
            "summary": "OpenAI-compatible: one model (`<type>` or `<type>/<name>`)",
            "operationId": "getModel",
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[^/]+$"}}],
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": _MODEL}}}, "default": _ERROR},
        }
    },
    "/v1/chat/completions": {
        "post": {
            "summary": 'OpenAI-compatible: the last user message to an LLM instance ({"op": "message"})',
            "operationId": "createChatCompletion",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _CHAT_REQUEST}}},
            "responses": {
                "200": {
                    "description": "the completion, or `chat.completion.chunk` server-sent events ending with `data: [DONE]`",
                    "content": {"application/json": {"schema": _COMPLETION}, "text/event-stream": {"schema": {"type": "string"}}},
                },
                "default": _ERROR,
            },
        }
    },
}
"""The routes above in the bridge's OpenAPI document."""
