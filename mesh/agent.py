"""The class users subclass: an agent type with a typed state and a request handler."""

from __future__ import annotations

import builtins
import inspect
import typing
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

import structlog
from pydantic import BaseModel, TypeAdapter

from mesh import subjects
from mesh.client import MeshClient
from mesh.connections import WEBSOCKET, Connection, Connections
from mesh.context import current_turn
from mesh.errors import SchemaMismatch
from mesh.mail import InboundEmail

if TYPE_CHECKING:
    from mesh.tasks import TaskSet

S = TypeVar("S")


class Agent(Generic[S]):
    """An addressable, stateful agent. Subclass it, set `type`, write `on_request`.

        class Counter(Agent[CounterState]):
            type = "counter"

            async def on_request(self, req: Add) -> Total:
                self.state.value += req.add
                return Total(value=self.state.value)

    One instance object lives per `(type, name)` in the worker that owns it. `self.state` is loaded
    before its first turn and saved (compare-and-set) after every turn that changed it; turns of one
    instance never overlap anywhere in the mesh. An agent declared `Agent[None]` (or plain `Agent`)
    has no state: its turns run concurrently on whichever worker receives them.

    The request model is read from `on_request`'s annotation (a pydantic model, or any type pydantic
    can validate); a body that does not match gets a `schema_mismatch` error before the handler runs.
    """

    type: ClassVar[str]
    state_model: ClassVar[builtins.type[BaseModel] | None] = None
    request_adapter: ClassVar[TypeAdapter[Any]]
    reply_adapter: ClassVar[TypeAdapter[Any]]
    _background: TaskSet | None = None
    _connections: Connections | None = None
    """The hosting worker's background tasks (an instance's timers live there, so they end when the
    worker stops); set by the runtime before `on_activate`, None outside a worker."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Agent:
                (arg,) = typing.get_args(base)
                if arg is None or arg is type(None):
                    cls.state_model = None
                elif isinstance(arg, type) and issubclass(arg, BaseModel):
                    cls.state_model = arg
                elif not isinstance(arg, TypeVar):
                    raise TypeError(f"{cls.__name__}: agent state must be a pydantic model, not {arg!r}")
        hints = typing.get_type_hints(cls.on_request)
        params = [p for p in inspect.signature(cls.on_request).parameters if p != "self"]
        cls.request_adapter = TypeAdapter(hints.get(params[0], Any) if params else Any)
        cls.reply_adapter = TypeAdapter(hints.get("return", Any))
        if "type" in cls.__dict__:
            subjects.check_type(cls.type)

    def __init__(self, name: str, state: S, mesh: MeshClient) -> None:
        self.name = name
        self.state: S = state
        self.mesh = mesh

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """The current turn's logger (agent type, name, turn id, trace id bound), or an instance logger."""
        turn = current_turn.get()
        if turn is not None and turn.agent_type == self.type and turn.name == self.name:
            return turn.log
        log: structlog.typing.FilteringBoundLogger = structlog.get_logger("mesh.agent")
        return log.bind(agent_type=self.type, agent_name=self.name)

    @classmethod
    def initial_state(cls, name: str) -> S:
        """The state of an instance that has never saved one; override to derive it from the name."""
        if cls.state_model is None:
            return None  # type: ignore[return-value]
        return cast(S, cls.state_model())

    async def on_activate(self) -> None:
        """Called once when this process takes ownership of the instance, after its state loaded."""

    async def on_request(self, request: Any) -> Any:
        """Handle one request (or fire-and-forget message); the return value is the JSON reply."""
        raise NotImplementedError(f"{type(self).__name__} must define on_request")

    async def on_email(self, mail: InboundEmail) -> Any:
        """Handle a mail sent to this instance (requests carrying `Mesh-Mail: 1`).

        By default the mail's clean text becomes the request of `on_request` (an LLM agent's user
        message). Override it to read the sender, thread, attachments or authentication verdict;
        return the reply's text, None for no reply, or any JSON value.
        """
        try:
            request = self.request_adapter.validate_python(mail.text)
        except ValueError as exc:
            raise SchemaMismatch(f"{self.type} takes no plain-text requests, so it cannot read mail: {exc}") from exc
        return await self.on_request(request)

    async def on_state_changed(self, previous: S) -> None:
        """Called within the turn whose handler changed the state, before it is saved."""

    async def on_deactivate(self) -> None:
        """Called when this process lets the instance go (idle eviction or shutdown)."""

    # -- connections (mesh.connections) ----------------------------------------------------------

    def accepts_connection(self, kind: str) -> bool:
        """Whether a client may open a connection of `kind` to this agent: by default a WebSocket,
        if the class defines `on_connect` or `on_message`. A refused connect is `method_not_found`."""
        cls = type(self)
        return kind == WEBSOCKET and (cls.on_connect is not Agent.on_connect or cls.on_message is not Agent.on_message)

    async def on_connect(self, conn: Connection) -> Any:
        """A client connected (a turn of the instance, finished before the connection's first
        `on_message`). Raise to refuse it: the bridge closes the client with 4000 + the error's status."""

    async def on_message(self, conn: Connection, data: str | bytes) -> Any:
        """One frame from a client (text as `str`, binary as `bytes`); frames arrive in order, one turn each."""

    async def on_close(self, conn: Connection) -> None:
        """The connection ended (`conn.close_code`: the client's code, 1006 when its bridge died)."""

    def connection_registry(self) -> Connections:
        """This instance's connections, loaded from `mesh_conns` on first use."""
        if self._connections is None:
            self._connections = Connections(self.mesh.nc, subjects.instance_key(self.type, self.name))
        return self._connections

    async def connections(self, tag: str | None = None) -> list[Connection]:
        """The open connections of this instance (only those tagged `tag`, if given), on any bridge."""
        return await self.connection_registry().all(tag)

    async def connection(self, conn_id: str) -> Connection | None:
        return await self.connection_registry().get(conn_id)

    async def broadcast(self, data: str | bytes, *, exclude: Iterable[str | Connection] = (), tag: str | None = None) -> int:
        """Send `data` to every open connection (tagged `tag`) but `exclude`; returns how many."""
        return await self.connection_registry().broadcast(data, exclude=exclude, tag=tag)

    # -- talking to other agents ----------------------------------------------------------------

    async def call(self, agent_type: str, name: str, payload: Any = None, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109 - the deadline travels with the request
        """Request/reply to another instance; the deadline and trace of this turn travel with it."""
        return await self.mesh.call(agent_type, name, payload, timeout=timeout)

    async def send(self, agent_type: str, name: str, payload: Any = None) -> None:
        """Fire-and-forget to another instance."""
        await self.mesh.send(agent_type, name, payload)

    async def send_durable(
        self, agent_type: str, name: str, payload: Any = None, *, msg_id: str | None = None, method: str | None = None
    ) -> int:
        """Store a message for another instance in JetStream; it runs there once, even across crashes."""
        return await self.mesh.send_durable(agent_type, name, payload, msg_id=msg_id, method=method)

    async def schedule(
        self,
        schedule_id: str,
        payload: Any = None,
        *,
        at: datetime | None = None,
        delay: float | None = None,
        every: float | str | None = None,
        cron: str | None = None,
        method: str | None = None,
    ) -> int:
        """Deliver `payload` to this instance at `at`, after `delay` s, `every` interval or on `cron`.

        Idempotent by `schedule_id`: registering the same id again replaces the schedule, so calling
        this in `on_activate` is safe. The payload goes to `on_request`, or to `method` (`@mesh.method`).
        """
        return await self.mesh.schedule(
            self.type, self.name, schedule_id, payload, at=at, delay=delay, every=every, cron=cron, method=method
        )

    async def cancel_schedule(self, schedule_id: str) -> bool:
        """Stop schedule `schedule_id` of this instance; False if it did not exist."""
        return await self.mesh.cancel_schedule(self.type, self.name, schedule_id)

    async def emit(self, kind: str, data: Any = None) -> None:
        """Publish an event of this instance on `events.<type>.<name>.<kind>`."""
        await self.mesh.emit(self.type, self.name, kind, data)
