"""The MCP servers of one LLM instance (openai-agents' MCP clients), connected while it is active.

An `LLMAgent` declares them in `build_mcp_servers()`; they are connected when the instance
activates and closed when it is evicted or the worker stops. The SDK's MCP clients hold anyio
task groups, which must be entered and left by one task, while an instance's turns, its eviction
and the worker's stop each run in tasks of their own: so each server lives in a holder task (a task
of the worker, in a fresh context) that connects it, waits to be told to stop, and closes it.

A run first waits for its servers (`ready`), never longer than the connect timeout nor past the
turn's deadline: a server that is down or hangs fails the run with an error naming it, in time for
the caller to hear it, and the instance keeps serving. After a failed run the servers are
reconnected before the next one (`reset`), since a connection that broke mid-run looks open.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from mesh.errors import AgentError
from mesh.tasks import TaskSet

if TYPE_CHECKING:
    from agents.mcp import MCPServer

CLOSE_TIMEOUT = 5.0
"""Longest wait for the servers to close when an instance is evicted."""


@dataclass
class _Link:
    """One server's holder task and what it has reached."""

    server: MCPServer
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # connected, or failed to
    error: BaseException | None = None
    task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done() and not self.stop.is_set() and self.error is None


class McpServers:
    """Keeps `servers` connected through holder tasks spawned on `tasks`."""

    def __init__(
        self,
        servers: Sequence[MCPServer],
        tasks: TaskSet,
        *,
        connect_timeout: float,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.servers = list(servers)
        self.tasks = tasks
        self.connect_timeout = connect_timeout
        self.log = log
        self._links: dict[int, _Link] = {}

    def start(self) -> None:
        """Connect every server that has no live holder (called on activation, and by `ready`)."""
        for index, server in enumerate(self.servers):
            link = self._links.get(index)
            if link is None or not link.alive:
                link = _Link(server)
                self._links[index] = link
                link.task = self.tasks.spawn(self._hold(link), context=contextvars.Context())

    async def ready(self, deadline: float | None) -> None:
        """Wait until every server is connected; `AgentError` naming the first one that is not, in
        time to be answered before `deadline` (a `time.monotonic()` value, None: no caller waits)."""
        if not self.servers:
            return
        self.start()
        wait = self.connect_timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            wait = min(wait, left - min(0.5, max(0.0, left) * 0.2))  # leave time to send the answer
        stop_at = time.monotonic() + max(0.0, wait)
        for link in list(self._links.values()):
            name = _name(link.server)
            try:
                async with asyncio.timeout(max(0.0, stop_at - time.monotonic())):
                    await link.settled.wait()
            except TimeoutError:
                raise AgentError(
                    f"MCP server {name!r} did not connect within {max(0.0, wait):.1f} s (the turn's deadline); "
                    "it may be hung or slow to start"
                ) from None
            if link.error is not None:
                raise AgentError(f"MCP server {name!r} is unreachable: {_describe(link.error)}") from link.error

    def reset(self) -> None:
        """Close every connection; `ready` opens new ones (after a run failed, maybe on a broken one)."""
        for link in self._links.values():
            link.stop.set()
        self._links.clear()

    async def close(self) -> None:
        """Close every connection and wait (briefly) for the holders to end."""
        links = list(self._links.values())
        self.reset()
        holders = [link.task for link in links if link.task is not None]
        if holders:
            await asyncio.wait(holders, timeout=CLOSE_TIMEOUT)

    async def _hold(self, link: _Link) -> None:
        server = link.server
        try:
            async with asyncio.timeout(self.connect_timeout):
                await server.connect()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
        except Exception as exc:  # unreachable, refused, timed out: reported by the next run
            link.error = exc
            self.log.warning("mcp.connect_failed", server=_name(server), error=_describe(exc))
            return
        finally:
            link.settled.set()
        self.log.info("mcp.connected", server=_name(server))
        try:
            await link.stop.wait()
        finally:
            try:
                await server.cleanup()  # type: ignore[no-untyped-call]
            except Exception as exc:
                self.log.warning("mcp.close_failed", server=_name(server), error=_describe(exc))
            else:
                self.log.info("mcp.closed", server=_name(server))


def _name(server: Any) -> str:
    return str(getattr(server, "name", None) or type(server).__name__)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    cause = exc.__cause__ or exc.__context__
    text = f"{type(exc).__name__}: {exc}"
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text[:500]
