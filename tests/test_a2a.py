"""A2A (`/a2a/{type}`): the official `a2a-sdk` client against a real uvicorn bridge and a real
`mesh worker` serving the demo agents on the offline model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from a2a.client import Client, ClientConfig, create_client
from a2a.helpers.proto_helpers import get_message_text, new_text_message
from a2a.types.a2a_pb2 import CancelTaskRequest, GetTaskRequest, Role, SendMessageRequest, StreamResponse, Task, TaskState
from a2a.utils.errors import InvalidParamsError, TaskNotCancelableError, TaskNotFoundError

from mesh.bus import NatsServer
from mesh.client import MeshClient
from mesh.models import OFFLINE_PREFIX
from mesh.testing import WorkerFactory, eventually
from services.http.testing import HttpFactory, RunningBridge

PARIS = OFFLINE_PREFIX + "History Tutor: the capital of France is Paris."
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def demo(nats_server: NatsServer, worker_factory: WorkerFactory, http_factory: HttpFactory) -> RunningBridge:
    """A `mesh worker` with the demo agents on the offline model, then a bridge (tokens: `s3cret`)."""
    await worker_factory(nats_server.url, app="services.demo", env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})
    return await http_factory(tokens=("s3cret",))


@pytest.fixture
async def a2a_for() -> AsyncIterator[ClientFactory]:
    """`await a2a_for(bridge, "triage", streaming=...)`: an `a2a-sdk` client that resolved the type's card."""
    opened: list[tuple[Client, httpx.AsyncClient]] = []

    async def make(bridge: RunningBridge, agent_type: str, *, streaming: bool = True, polling: bool = False) -> Client:
        http = httpx.AsyncClient(headers={"Authorization": "Bearer s3cret"}, timeout=60)
        config = ClientConfig(streaming=streaming, polling=polling, httpx_client=http)
        client = await create_client(f"{bridge.url}/a2a/{agent_type}", config)
        opened.append((client, http))
        return client

    try:
        yield make
    finally:
        for client, http in opened:
            await client.close()
            await http.aclose()


def message(text: str, *, context_id: str = "", task_id: str = "") -> SendMessageRequest:
    msg = new_text_message(text, role=Role.ROLE_USER, context_id=context_id or None, task_id=task_id or None)
    return SendMessageRequest(message=msg)


async def send(client: Client, request: SendMessageRequest) -> list[StreamResponse]:
    return [event async for event in client.send_message(request)]


def final_status(events: list[StreamResponse]) -> tuple[Task | None, Any]:
    """The task a stream started with, and the last status it reported."""
    first = events[0].task if events[0].HasField("task") else None
    last = events[-1]
    return first, last.status_update.status if last.HasField("status_update") else last.task.status


async def test_the_a2a_client_resolves_the_triage_card_and_gets_an_answer(
    demo: RunningBridge, a2a_for: ClientFactory, mesh_client: MeshClient
) -> None:
    async with httpx.AsyncClient(base_url=demo.url, headers={"Authorization": "Bearer s3cret"}) as http:
        card = (await http.get("/a2a/triage/.well-known/agent-card.json")).json()
        assert card["name"] == "triage" and card["capabilities"]["streaming"] is True
        assert card["supportedInterfaces"] == [
            {"url": f"{demo.url}/a2a/triage", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
        ]
        assert card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"] == "bearer"
        assert (await http.get("/a2a/counter/.well-known/agent-card.json")).status_code == 404  # not an LLM type
        assert (await http.get("/a2a/triage/.well-known/agent-card.json", headers={"Authorization": ""})).status_code == 401

    streaming = await a2a_for(demo, "triage")
    events = await send(streaming, message("What is the capital of France?", context_id="alice"))
    first, status = final_status(events)
    assert first is not None and first.context_id == "alice" and first.status.state == TaskState.TASK_STATE_WORKING
    assert status.state == TaskState.TASK_STATE_COMPLETED
    assert get_message_text(status.message) == PARIS
    assert [e.artifact_update.artifact.parts[0].text for e in events if e.HasField("artifact_update")] == [PARIS]

    # The task is the run: GetTask finds it from its id alone, and contextId is the instance.
    task = await streaming.get_task(GetTaskRequest(id=first.id))
    assert task.status.state == TaskState.TASK_STATE_COMPLETED and task.artifacts[0].parts[0].text == PARIS
    assert task.metadata["run_id"] == first.id.split(".")[0]
    state = await mesh_client.state("triage", "alice")
    assert [r["run_id"] for r in state["runs"]] == [task.metadata["run_id"]]

    plain = await a2a_for(demo, "triage", streaming=False)
    (event,) = await send(plain, message("What is 12 * 7?", context_id="alice"))
    assert event.task.status.state == TaskState.TASK_STATE_COMPLETED
    assert get_message_text(event.task.status.message) == OFFLINE_PREFIX + "Math Tutor: 12 * 7 = 84."
    assert event.task.context_id == "alice"

    fresh = await send(plain, message("What is the capital of France?"))
    assert fresh[0].task.context_id not in ("", "alice")  # no contextId: a fresh instance

    with pytest.raises(TaskNotFoundError):
        await plain.get_task(GetTaskRequest(id="run_000000000000.bm9ib2R5"))
    with pytest.raises(TaskNotFoundError):
        await plain.get_task(GetTaskRequest(id="not a task id"))


async def test_an_approval_shows_as_input_required_and_an_answer_on_the_task_resumes_it(
    demo: RunningBridge, a2a_for: ClientFactory, mesh_client: MeshClient
) -> None:
    clerk = await a2a_for(demo, "clerk")
    events = await send(clerk, message("add 5 to counter demo", context_id="desk"))
    first, status = final_status(events)
    assert first is not None
    assert status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    note = get_message_text(status.message)
    assert "add_to_counter" in note and "approve" in note
    (approval,) = (await mesh_client.call("clerk", "desk", {"op": "approvals"}))["pending"]
    assert approval["id"] in note
    assert (await clerk.get_task(GetTaskRequest(id=first.id))).status.state == TaskState.TASK_STATE_INPUT_REQUIRED

    # A new message in the context is refused while the run waits: the task is `rejected`.
    _, refused = final_status(await send(clerk, message("read counter demo", context_id="desk")))
    assert refused.state == TaskState.TASK_STATE_REJECTED and "approval_pending" in get_message_text(refused.message)

    _, resumed = final_status(await send(clerk, message("approve", task_id=first.id)))
    assert resumed.state == TaskState.TASK_STATE_COMPLETED
    assert '{"value":5}' in get_message_text(resumed.message)
    assert await mesh_client.call("counter", "demo", {"add": 0}) == {"value": 5}
    task = await clerk.get_task(GetTaskRequest(id=first.id))
    assert task.status.state == TaskState.TASK_STATE_COMPLETED

    with pytest.raises(InvalidParamsError):  # a finished task takes no more answers
        await send(clerk, message("approve", task_id=first.id))


async def test_canceling_a_task_awaiting_approval_rejects_it_and_the_tool_never_runs(
    demo: RunningBridge, a2a_for: ClientFactory, mesh_client: MeshClient
) -> None:
    clerk = await a2a_for(demo, "clerk", streaming=False)
    (event,) = await send(clerk, message("add 7 to counter kept", context_id="till"))
    assert event.task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    canceled = await clerk.cancel_task(CancelTaskRequest(id=event.task.id))
    assert canceled.status.state == TaskState.TASK_STATE_CANCELED
    assert "did not change the counter" in get_message_text(canceled.status.message)
    assert (await clerk.get_task(GetTaskRequest(id=event.task.id))).status.state == TaskState.TASK_STATE_CANCELED
    assert await mesh_client.state("counter", "kept") is None  # the tool never ran
    with pytest.raises(TaskNotCancelableError):  # a finished task cannot be canceled
        await clerk.cancel_task(CancelTaskRequest(id=event.task.id))


async def test_a_task_sent_with_return_immediately_is_working_then_get_task_shows_it_completed(
    demo: RunningBridge, a2a_for: ClientFactory
) -> None:
    polling = await a2a_for(demo, "triage", streaming=False, polling=True)
    (event,) = await send(polling, message("What is the capital of France?", context_id="poller"))
    assert event.task.status.state == TaskState.TASK_STATE_WORKING

    async def completed() -> Task:
        task = await polling.get_task(GetTaskRequest(id=event.task.id))
        assert task.status.state == TaskState.TASK_STATE_COMPLETED, TaskState.Name(task.status.state)
        return task

    task = await eventually(completed, timeout=60, interval=0.2)
    assert get_message_text(task.status.message) == PARIS
