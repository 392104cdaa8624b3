"""A2A tasks over the mesh: the `a2a-sdk` request handler behind `/a2a/{type}` (see `services.http.a2a`).

A task is one run of an LLM instance: its `contextId` is the instance name and its id is
`<run_id>.<instance name in base64url>`, so any bridge replica finds the instance from the id
alone. Task states come from the run: completed, failed, `input-required` while it awaits an
approval (answer with a message on the task: "approve", or "reject <reason>", or a data part
`{"decision": "approve"|"reject", "reason"?, "approval"?}`), `canceled` once CancelTask has
rejected its approvals, and `rejected` when the instance refused the message (a run of it already
awaits approval). `GetTask` reads the instance's state (its last 10 runs and open approvals); a
task started with `returnImmediately` is `working` on the replica that started it until its run
ends. A turn in progress cannot be interrupted, so only a task awaiting approval can be canceled.

The `a2a-sdk` JSON-RPC dispatcher does the protocol binding; this module only maps its calls.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections import OrderedDict
from collections.abc import AsyncGenerator
from typing import Any, Literal

import orjson
import structlog
from a2a.helpers.proto_helpers import get_data_parts, new_data_part, new_text_message
from a2a.server.context import ServerCallContext
from a2a.server.events.event_queue import Event
from a2a.server.request_handlers.request_handler import RequestHandler, validate_request_params
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Artifact,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    HTTPAuthSecurityScheme,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Part,
    Role,
    SecurityRequirement,
    SecurityScheme,
    SendMessageRequest,
    StringList,
    SubscribeToTaskRequest,
    Task,
    TaskArtifactUpdateEvent,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import (
    ExtendedAgentCardNotConfiguredError,
    InvalidParamsError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mesh import __version__, subjects
from mesh.approvals import LLMState, PendingApproval
from mesh.client import MeshClient
from mesh.errors import MeshError
from services.catalog import AgentType
from services.http.bridge import Bridge
from services.http.llm_runs import (
    LLMReply,
    Send,
    approvals_json,
    approvals_text,
    follow_run,
    message_body,
    new_run_id,
    parse_reply,
    reply_text,
)
from services.http.routes import principal_of

log = structlog.get_logger("services.http")

OUTPUT = "output"
CANCELED_REASON = "canceled by the A2A client (CancelTask)"
APPROVE_WORDS = {"approve", "approved", "yes", "y", "ok", "okay"}
REJECT_WORDS = {"reject", "rejected", "no", "n", "deny", "denied"}
RECENT = 1000
"""Tasks started with `returnImmediately` that this replica remembers (the newest)."""


# -- ids ------------------------------------------------------------------------------------


def task_id_of(run_id: str, name: str) -> str:
    return f"{run_id}.{base64.urlsafe_b64encode(name.encode()).decode().rstrip('=')}"


def parse_task_id(task_id: str) -> tuple[str, str]:
    """`(run_id, name)` of a task id; `TaskNotFoundError` for anything this bridge never made."""
    run_id, dot, encoded = task_id.partition(".")
    try:
        name = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode() if dot else ""
        subjects.encode_name(name)
    except (binascii.Error, UnicodeDecodeError, ValueError, MeshError):
        raise TaskNotFoundError(f"no task {task_id[:100]!r}") from None
    if not run_id.startswith("run_"):
        raise TaskNotFoundError(f"no task {task_id[:100]!r}")
    return run_id, name


# -- the card -------------------------------------------------------------------------------


def agent_card(agent: AgentType, url: str, *, auth: bool) -> AgentCard:
    description = agent.description or f"the {agent.type} LLM agent of an agent-mesh"
    card = AgentCard(
        name=agent.type,
        description=description,
        version=__version__,
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id=agent.type, name=agent.type, description=description, tags=["agent-mesh", "llm"])],
    )
    if auth:
        card.security_schemes["bearer"].CopyFrom(
            SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="bearer"))
        )
        card.security_requirements.append(SecurityRequirement(schemes={"bearer": StringList()}))
    return card


# -- tasks from runs ------------------------------------------------------------------------


class TaskView:
    """Builds the A2A objects of one task (one run of instance `name` of `agent_type`)."""

    def __init__(self, agent_type: str, name: str, run_id: str) -> None:
        self.agent_type, self.name, self.run_id = agent_type, name, run_id
        self.id = task_id_of(run_id, name)

    def message(self, text: str, data: Any = None) -> Message:
        message = new_text_message(text, context_id=self.name, task_id=self.id, role=Role.ROLE_AGENT)
        if data is not None:
            message.parts.append(new_data_part(data))
        return message

    def status(self, state: TaskState, text: str | None = None, data: Any = None) -> TaskStatus:
        status = TaskStatus(state=state)
        if text is not None:
            status.message.CopyFrom(self.message(text, data))
        status.timestamp.GetCurrentTime()
        return status

    def task(self, status: TaskStatus, output: str | None = None, metadata: dict[str, Any] | None = None) -> Task:
        task = Task(id=self.id, context_id=self.name, status=status)
        if output:
            task.artifacts.append(Artifact(artifact_id=OUTPUT, name=OUTPUT, parts=[Part(text=output)]))
        task.metadata.update({"type": self.agent_type, "name": self.name, "run_id": self.run_id, **(metadata or {})})
        return task

    def of_reply(self, reply: LLMReply) -> Task:
        meta = {"agent": reply.agent, "model": reply.model, "status": reply.status}
        if reply.status == "completed":
            text = reply_text(reply)
            return self.task(self.status(TaskState.TASK_STATE_COMPLETED, text), text, meta)
        if reply.status == "awaiting_approval":
            approvals = approvals_json(self.agent_type, self.name, reply)
            note = approvals_text(self.agent_type, self.name, reply)
            return self.task(self.status(TaskState.TASK_STATE_INPUT_REQUIRED, note, {"approvals": approvals}), None, meta)
        return self.task(self.status(TaskState.TASK_STATE_FAILED, reply_text(reply)), None, meta)

    def of_error(self, err: MeshError) -> Task:
        """The instance refused the message (4xx: `rejected`) or the run did not finish (`failed`)."""
        state = TaskState.TASK_STATE_REJECTED if err.status < 500 else TaskState.TASK_STATE_FAILED
        return self.task(self.status(state, f"{err.code}: {err.message}"), None, {"error": err.code})

    def of_state(self, state: LLMState) -> Task | None:
        """The task as the instance's stored state knows it (None: not among its recent runs)."""
        waiting = [p for p in state.pending if p.run_id == self.run_id and p.decision is None]
        if waiting:
            reply = LLMReply(status="awaiting_approval", run_id=self.run_id, agent=waiting[0].agent, model="", approvals=waiting)
            return self.of_reply(reply)
        record = next((r for r in state.runs if r.run_id == self.run_id), None)
        if record is None:
            return None
        meta = {"agent": record.agent, "status": record.status}
        if any(d.run_id == self.run_id and d.reason == CANCELED_REASON for d in state.decisions):
            return self.task(self.status(TaskState.TASK_STATE_CANCELED, record.output), record.output, meta)
        if record.status == "completed":
            return self.task(self.status(TaskState.TASK_STATE_COMPLETED, record.output or ""), record.output, meta)
        if record.status == "failed":
            return self.task(self.status(TaskState.TASK_STATE_FAILED, record.output or ""), None, meta)
        return self.task(self.status(TaskState.TASK_STATE_WORKING), None, meta)


# -- the handler ----------------------------------------------------------------------------


class BridgeContext(DefaultServerCallContextBuilder):
    """Puts the bridge, the agent type of the URL and the caller's principal in the call context."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state["bridge"] = request.app.state.bridge
        context.state["agent_type"] = request.path_params["type"]
        context.state["principal"] = principal_of(request)
        return context


def _where(context: ServerCallContext) -> tuple[Bridge, str, str]:
    principal = str(context.state.get("principal") or "")
    return context.state["bridge"], context.state["agent_type"], f"a2a:{principal}" if principal else "a2a"


def _input(message: Message) -> tuple[str, list[Any]]:
    """The text and the data parts of a client's message."""
    texts, data = [], get_data_parts(message.parts)
    for part in message.parts:
        if part.HasField("text"):
            texts.append(part.text)
        elif not part.HasField("data"):
            raise InvalidParamsError("only text and data parts are supported")
    return "\n".join(texts).strip(), data


def _decision(text: str, data: list[Any]) -> tuple[Literal["approve", "reject"], str | None, str | None]:
    """`(decision, reason, approval id or None for all)` from an answer to a task awaiting approval."""
    for item in data:
        if isinstance(item, dict) and item.get("decision") in ("approve", "reject"):
            reason, approval = item.get("reason"), item.get("approval")
            return item["decision"], str(reason) if reason else None, str(approval) if approval else None
    word, _, rest = text.partition(" ")
    word = word.strip(".,!:;").lower()
    if word in APPROVE_WORDS:
        return "approve", None, None
    if word in REJECT_WORDS:
        return "reject", rest.strip() or None, None
    raise InvalidParamsError('this task awaits approval: answer "approve" or "reject <reason>"')


class MeshTasks(RequestHandler):
    """A2A calls as mesh requests: a message is `{"op": "message", ...}` with a run id chosen here;
    an answer to an `input-required` task is `{"op": "approve"|"reject", ...}` for its approvals."""

    def __init__(self) -> None:
        self._recent: OrderedDict[str, Task] = OrderedDict()

    def _remember(self, task: Task) -> None:
        self._recent[task.id] = task
        self._recent.move_to_end(task.id)
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)

    # -- starting and continuing runs --

    async def _prepare(self, params: SendMessageRequest, context: ServerCallContext) -> _Run:
        bridge, agent_type, by = _where(context)
        message = params.message
        text, data = _input(message)
        if message.task_id:
            run_id, name = parse_task_id(message.task_id)
            if message.context_id and message.context_id != name:
                raise InvalidParamsError(f"context {message.context_id[:100]} is not the context of task {message.task_id}")
            current = await self._find(bridge, agent_type, TaskView(agent_type, name, run_id))
            if current is None:
                raise TaskNotFoundError(f"no task {message.task_id[:100]}")
            if current.status.state != TaskState.TASK_STATE_INPUT_REQUIRED:
                raise InvalidParamsError(
                    f"task {current.id} is {TaskState.Name(current.status.state)}: "
                    "send a new message in its context (without taskId) to continue the conversation"
                )
            decision, reason, approval = _decision(text, data)
            waiting = await self._waiting(bridge, agent_type, name, run_id)
            chosen = [p for p in waiting if approval is None or p.id == approval]
            if not chosen:
                raise InvalidParamsError(f"task {current.id} has no open approval {approval!r}")
            decide = _Decisions(bridge, agent_type, name, chosen, decision, by, reason)
            return _Run(bridge, TaskView(agent_type, name, run_id), decide)
        if not text:
            raise InvalidParamsError("the message has no text")
        name = message.context_id or MeshClient.new_name(agent_type)
        try:
            subjects.encode_name(name)
        except MeshError as err:
            raise InvalidParamsError(f"contextId: {err.message}") from err
        run_id = new_run_id()
        body = message_body(text, run_id)

        async def send() -> bytes:
            return await bridge.call(agent_type, name, body, bridge.config.async_timeout)

        return _Run(bridge, TaskView(agent_type, name, run_id), send, user=message)

    @validate_request_params
    async def on_message_send(self, params: SendMessageRequest, context: ServerCallContext) -> Task | Message:
        run = await self._prepare(params, context)
        if not params.configuration.return_immediately:
            return await run.finish()
        working = run.view.task(run.view.status(TaskState.TASK_STATE_WORKING))
        self._remember(working)

        async def in_background() -> None:
            self._remember(await run.finish())

        run.bridge.spawn(in_background())
        return working

    @validate_request_params
    async def on_message_send_stream(self, params: SendMessageRequest, context: ServerCallContext) -> AsyncGenerator[Event]:
        run = await self._prepare(params, context)
        view = run.view
        first = view.task(view.status(TaskState.TASK_STATE_WORKING))
        if run.user is not None:
            first.history.append(run.user)
        yield first
        streamed = False
        final: Task | None = None
        try:
            async with contextlib.aclosing(follow_run(run.bridge, view.agent_type, view.name, view.run_id, run.send)) as items:
                async for item in items:
                    if isinstance(item, str):
                        artifact = Artifact(artifact_id=OUTPUT, name=OUTPUT, parts=[Part(text=item)])
                        yield TaskArtifactUpdateEvent(task_id=view.id, context_id=view.name, artifact=artifact, append=streamed)
                        streamed = True
                        continue
                    final = view.of_reply(item)
        except MeshError as err:
            final = view.of_error(err)
        assert final is not None
        if final.artifacts and not streamed:
            yield TaskArtifactUpdateEvent(task_id=view.id, context_id=view.name, artifact=final.artifacts[0], last_chunk=True)
        yield TaskStatusUpdateEvent(task_id=view.id, context_id=view.name, status=final.status, metadata=final.metadata)

    # -- reading and canceling --

    async def _waiting(self, bridge: Bridge, agent_type: str, name: str, run_id: str) -> list[PendingApproval]:
        state = await self._state(bridge, agent_type, name)
        return [p for p in (state.pending if state else []) if p.run_id == run_id and p.decision is None]

    async def _state(self, bridge: Bridge, agent_type: str, name: str) -> LLMState | None:
        found = await bridge.read_state(agent_type, name)
        if found is None:
            return None
        try:
            return LLMState.model_validate_json(found[0])
        except ValueError:
            return None

    async def _find(self, bridge: Bridge, agent_type: str, view: TaskView) -> Task | None:
        state = await self._state(bridge, agent_type, view.name)
        found = view.of_state(state) if state is not None else None
        return found or self._recent.get(view.id)

    @validate_request_params
    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        bridge, agent_type, _ = _where(context)
        run_id, name = parse_task_id(params.id)
        try:
            return await self._find(bridge, agent_type, TaskView(agent_type, name, run_id))
        except MeshError as err:
            raise InvalidParamsError(f"{err.code}: {err.message}") from err

    @validate_request_params
    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task | None:
        """Only a task awaiting approval can be canceled: its approvals are rejected (the tools never
        run), and the run ends with the model told so."""
        bridge, agent_type, by = _where(context)
        run_id, name = parse_task_id(params.id)
        view = TaskView(agent_type, name, run_id)
        current = await self._find(bridge, agent_type, view)
        if current is None:
            return None
        if current.status.state != TaskState.TASK_STATE_INPUT_REQUIRED:
            raise TaskNotCancelableError(
                f"task {current.id} is {TaskState.Name(current.status.state)}: only a task awaiting approval can be "
                "canceled (a turn in progress is not interrupted)"
            )
        waiting = await self._waiting(bridge, agent_type, name, run_id)
        try:
            reply = parse_reply(await _Decisions(bridge, agent_type, name, waiting, "reject", by, CANCELED_REASON)(), name)
        except MeshError as err:
            raise TaskNotCancelableError(f"{err.code}: {err.message}") from err
        text = reply_text(reply) or None
        return view.task(view.status(TaskState.TASK_STATE_CANCELED, text), text, {"agent": reply.agent, "status": reply.status})

    # -- not offered --

    async def on_list_tasks(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        raise UnsupportedOperationError("ListTasks is not offered: GetTask a task by its id")

    async def on_subscribe_to_task(self, params: SubscribeToTaskRequest, context: ServerCallContext) -> AsyncGenerator[Event]:
        raise UnsupportedOperationError("SubscribeToTask is not offered: GetTask a task by its id")
        yield  # an async generator, as the interface declares

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        raise PushNotificationNotSupportedError

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        raise PushNotificationNotSupportedError

    async def on_get_extended_agent_card(self, params: GetExtendedAgentCardRequest, context: ServerCallContext) -> AgentCard:
        raise ExtendedAgentCardNotConfiguredError


class _Decisions:
    """Decide approvals of one run in turn; the reply to the last one is the run's (resumed) reply."""

    def __init__(
        self,
        bridge: Bridge,
        agent_type: str,
        name: str,
        approvals: list[PendingApproval],
        decision: Literal["approve", "reject"],
        by: str,
        reason: str | None,
    ) -> None:
        self.bridge, self.agent_type, self.name = bridge, agent_type, name
        self.approvals, self.decision, self.by, self.reason = approvals, decision, by, reason

    async def __call__(self) -> bytes:
        reply = b""
        for approval in self.approvals:
            message = {"op": self.decision, "id": approval.id, "by": self.by, "reason": self.reason}
            reply = await self.bridge.call(self.agent_type, self.name, orjson.dumps(message), self.bridge.config.async_timeout)
        return reply


class _Run:
    """A prepared message (or decision) of one task: `finish()` waits for its outcome."""

    def __init__(self, bridge: Bridge, view: TaskView, send: Send, user: Message | None = None) -> None:
        self.bridge, self.view, self.send, self.user = bridge, view, send, user

    async def finish(self) -> Task:
        try:
            task = self.view.of_reply(parse_reply(await self.send(), f"{self.view.agent_type}/{self.view.name}"))
        except MeshError as err:
            task = self.view.of_error(err)
        if self.user is not None:
            task.history.append(self.user)
        return task


class A2AServer:
    """The card and the JSON-RPC endpoint of every LLM agent type (one dispatcher for all)."""

    def __init__(self) -> None:
        self.dispatcher = JsonRpcDispatcher(request_handler=MeshTasks(), context_builder=BridgeContext())

    def card(self, request: Request, agent: AgentType) -> Response:
        bridge: Bridge = request.app.state.bridge
        url = f"{str(request.base_url).rstrip('/')}/a2a/{agent.type}"
        return JSONResponse(agent_card_to_dict(agent_card(agent, url, auth=bridge.config.auth_enabled)))

    async def handle(self, request: Request) -> Response:
        return await self.dispatcher.handle_requests(request)
