"""The OpenAI-compatible API (`/v1`): the official `openai` client and an openai-agents `Agent`
against a real uvicorn bridge and real workers; the LLM is a local chat-completions stub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import pytest
from llm_apps import Recall
from llm_stub import ChatCompletionsStub
from openai import AsyncOpenAI

from mesh.bus import NatsServer
from mesh.client import MeshClient
from mesh.testing import WorkerFactory
from services.http.testing import HttpFactory, RunningBridge

PARIS = "Stub LLM, history: Paris is the capital of France."


@pytest.fixture
async def stub() -> AsyncIterator[ChatCompletionsStub]:
    async with ChatCompletionsStub() as running:
        yield running


async def triage_mesh(
    nats_server: NatsServer, worker_factory: WorkerFactory, http_factory: HttpFactory, stub: ChatCompletionsStub, **config: Any
) -> RunningBridge:
    """A `mesh worker` serving the triage demo on the stub LLM (which streams each answer in two
    deltas), and a bridge started after it (so its first discovery sees the worker)."""
    env = {"OPENAI_BASE_URL": stub.base_url, "OPENAI_API_KEY": "stub-key", "MESH_MODEL": "stub-model"}
    await worker_factory(nats_server.url, app="services.triage", env=env)
    return await http_factory(**config)


OpenAIFactory = Callable[..., AsyncOpenAI]


@pytest.fixture
async def openai_for() -> AsyncIterator[OpenAIFactory]:
    """`openai_for(bridge, api_key=...)`: an official client of the bridge's `/v1`, closed after the test."""
    clients: list[AsyncOpenAI] = []

    def make(bridge: RunningBridge, api_key: str = "unused") -> AsyncOpenAI:
        clients.append(AsyncOpenAI(base_url=f"{bridge.url}/v1", api_key=api_key, max_retries=0, timeout=60))
        return clients[-1]

    try:
        yield make
    finally:
        for client in clients:
            await client.close()


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


async def test_the_openai_client_gets_the_paris_answer_plain_and_streamed_and_the_second_message_sees_memory(
    nats_server: NatsServer,
    worker_factory: WorkerFactory,
    http_factory: HttpFactory,
    stub: ChatCompletionsStub,
    openai_for: OpenAIFactory,
) -> None:
    bridge = await triage_mesh(nats_server, worker_factory, http_factory, stub)
    client = openai_for(bridge)

    models = [m.id async for m in client.models.list()]
    assert models == ["clerk", "triage"]
    assert (await client.models.retrieve("triage/alice")).id == "triage/alice"

    plain = await client.chat.completions.create(model="triage/alice", messages=ask("What is the capital of France?"))
    assert plain.choices[0].message.content == PARIS
    assert plain.choices[0].finish_reason == "stop"
    assert plain.model == "triage/alice"
    assert plain.usage is not None and plain.usage.total_tokens == 36
    extension = (plain.model_extra or {})["mesh"]
    assert extension["agent"] == "History Tutor" and extension["status"] == "completed" and extension["model"] == "stub-model"

    # The stub holds the second half of its answer until the client has seen the first: the
    # chunks come as the model writes them, not once the run is over.
    stub.hold.clear()
    stream = await client.chat.completions.create(
        model="triage/alice",
        messages=ask("Remind me: what is the capital of France?"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = []
    async for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            stub.hold.set()
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 2, deltas
    assert "".join(deltas) == PARIS
    assert all(c.object == "chat.completion.chunk" and c.model == "triage/alice" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 36

    # The second message's first model request carries the first exchange: the instance's memory.
    second_run = [str(m.get("content")) for m in stub.requests[2]["messages"]]
    assert "What is the capital of France?" in second_run and PARIS in second_run
    assert "Remind me: what is the capital of France?" in second_run


async def test_the_stream_ends_with_done_after_the_chunks(
    nats_server: NatsServer, worker_factory: WorkerFactory, http_factory: HttpFactory, stub: ChatCompletionsStub
) -> None:
    bridge = await triage_mesh(nats_server, worker_factory, http_factory, stub)
    body = {"model": "triage/raw", "messages": ask("What is the capital of France?"), "stream": True}
    async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert sum(1 for e in events if '"content":"' in e and '"content":""' not in e) >= 2


async def test_an_sdk_agent_whose_model_is_the_mesh_delegates_to_the_mesh_agent(
    nats_server: NatsServer,
    worker_factory: WorkerFactory,
    http_factory: HttpFactory,
    stub: ChatCompletionsStub,
    openai_for: OpenAIFactory,
) -> None:
    from agents import Agent, OpenAIChatCompletionsModel, RunConfig, Runner

    bridge = await triage_mesh(nats_server, worker_factory, http_factory, stub)
    front = Agent(
        name="Front desk",
        instructions="Answer the visitor's question.",
        model=OpenAIChatCompletionsModel(model="triage/sdk-visitor", openai_client=openai_for(bridge)),
    )
    result = await Runner.run(front, "What is the capital of France?", run_config=RunConfig(tracing_disabled=True))
    assert result.final_output == PARIS
    streamed = Runner.run_streamed(front, "And the capital of France?", run_config=RunConfig(tracing_disabled=True))
    async for _ in streamed.stream_events():
        pass
    assert streamed.final_output == PARIS
    # The SDK's system prompt and earlier turns are not replayed: the mesh instance got one user
    # message per run, and its own memory held the first exchange.
    assert "Answer the visitor's question." not in str(stub.requests)
    assert [m["content"] for m in stub.requests[2]["messages"] if m["role"] == "user"] == [
        "What is the capital of France?",
        "And the capital of France?",
    ]


async def test_an_unknown_model_is_a_404_in_openais_error_shape(http_factory: HttpFactory, openai_for: OpenAIFactory) -> None:
    bridge = await http_factory()
    client = openai_for(bridge)
    assert [m.id async for m in client.models.list()] == []
    for model in ("nosuch", "nosuch/alice", "Not A Type"):
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model=model, messages=ask("hello"))
        assert caught.value.status_code == 404
        assert caught.value.body == {
            "message": caught.value.body["message"],  # type: ignore[index]
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
        assert f"`{model}`" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nosuch")


async def test_bad_requests_get_openai_errors_and_the_bridge_keeps_serving(mesh_factory: Any, http_factory: HttpFactory) -> None:
    await mesh_factory([Recall])
    bridge = await http_factory()
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        cases: list[tuple[Any, int, str | None]] = [
            (b"{not json", 400, None),
            ({"model": "recall"}, 400, "messages"),
            ({"model": "recall", "messages": []}, 400, "messages"),
            ({"model": "recall", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages"),
            ({"model": "recall", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages"),
            ({"model": "recall", "messages": ask("x"), "n": 2}, 400, "n"),
            ({"model": "recall/", "messages": ask("x")}, 400, "model"),
            ({"model": "recall", "messages": ask("x"), "user": "x" * 300}, 400, "user"),
        ]
        for body, status, param in cases:
            response = await (
                http.post("/v1/chat/completions", content=body)
                if isinstance(body, bytes)
                else http.post("/v1/chat/completions", json=body)
            )
            assert response.status_code == status, (body, response.text)
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
            if param is not None:
                assert error["param"] == param, (body, error)
        wrong_method = await http.get("/v1/chat/completions")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["code"] == "method_not_allowed"
        ok = await http.post("/v1/chat/completions", json={"model": "recall/ok", "messages": ask("still here?")})
        assert ok.json()["choices"][0]["message"]["content"].endswith("1 user messages: still here?")


async def test_the_instance_memory_is_the_conversation_and_earlier_messages_are_not_replayed(
    mesh_factory: Any, http_factory: HttpFactory, mesh_client: MeshClient, openai_for: OpenAIFactory
) -> None:
    await mesh_factory([Recall])
    client = openai_for(await http_factory())

    async def say(model: str, messages: list[Any], user: str | None = None) -> tuple[str, str]:
        answer = await client.chat.completions.create(model=model, messages=messages, **({"user": user} if user else {}))
        return str(answer.choices[0].message.content), answer.model

    stateless_history = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ahoy"},
        {"role": "user", "content": "second"},
    ]
    text, model = await say("recall", stateless_history)
    assert text.endswith("1 user messages: second")  # a fresh instance: only the last message reached it
    assert model.startswith("recall/") and len(model) > len("recall/")
    text, again = await say(model, ask("third"))  # the answer's model names the instance: continue there
    assert again == model and text.endswith("2 user messages: second | third")

    await say("recall", ask("a"), user="bob")
    text, model = await say("recall", ask("b"), user="bob")  # no name in the model: the user field is the instance
    assert model == "recall/bob" and text.endswith("2 user messages: a | b")
    text, _ = await say("recall/carol", ask("c"), user="bob")  # a name in the model wins over the user field
    assert text.endswith("1 user messages: c")


async def test_a_run_that_pauses_for_approval_returns_its_text_and_names_the_approval(
    nats_server: NatsServer, worker_factory: WorkerFactory, http_factory: HttpFactory, openai_for: OpenAIFactory
) -> None:
    await worker_factory(nats_server.url, app="services.demo", env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})
    bridge = await http_factory()
    client = openai_for(bridge)

    paused = await client.chat.completions.create(model="clerk/desk", messages=ask("add 5 to counter demo"))
    extension = (paused.model_extra or {})["mesh"]
    assert extension["status"] == "awaiting_approval"
    (approval,) = extension["approvals"]
    assert approval["tool"] == "add_to_counter" and approval["id"].startswith("ap_")
    assert approval["approve"] == f"/agents/clerk/desk/approvals/{approval['id']}/approve"
    content = str(paused.choices[0].message.content)
    assert approval["id"] in content and "add_to_counter" in content

    # While it waits, the instance refuses new messages: a 409 before any chunk, streamed or not.
    for stream in (False, True):
        with pytest.raises(openai.ConflictError) as caught:
            await client.chat.completions.create(model="clerk/desk", messages=ask("read counter demo"), stream=stream)
        assert caught.value.code == "approval_pending"

    async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as http:
        decided = (await http.post(approval["approve"])).json()
        assert decided["status"] == "completed" and '{"value":5}' in decided["output"]
    streamed = await client.chat.completions.create(model="clerk/desk", messages=ask("add 1 to counter demo"), stream=True)
    chunks = [chunk async for chunk in streamed]
    final = chunks[-1].model_extra or {}
    assert final["mesh"]["status"] == "awaiting_approval"
    assert final["mesh"]["approvals"][0]["id"] in "".join(c.choices[0].delta.content or "" for c in chunks)


async def test_the_bridges_bearer_token_guards_v1_and_its_401_is_in_openais_shape(
    nats_server: NatsServer,
    worker_factory: WorkerFactory,
    http_factory: HttpFactory,
    stub: ChatCompletionsStub,
    openai_for: OpenAIFactory,
) -> None:
    bridge = await triage_mesh(nats_server, worker_factory, http_factory, stub, tokens=("s3cret",))
    with pytest.raises(openai.AuthenticationError) as caught:
        await openai_for(bridge, "wrong").models.list()
    assert caught.value.body == {
        "message": "a valid bearer token (or ticket) is required",
        "type": "authentication_error",
        "param": None,
        "code": "unauthorized",
    }
    answer = await openai_for(bridge, "s3cret").chat.completions.create(
        model="triage/t", messages=ask("What is the capital of France?")
    )
    assert answer.choices[0].message.content == PARIS
