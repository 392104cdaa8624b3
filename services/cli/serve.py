"""The long-running `mesh` subcommands: each composes one process out of the library and the services.

    mesh up       an embedded nats-server (unless --nats-url), a worker, the HTTP bridge, the SMTP service
    mesh worker   one more worker for the same agents
    mesh http     the HTTP bridge alone
    mesh smtp     the SMTP ingestion service alone

Each serves until SIGINT or SIGTERM, then stops what it started, in reverse order, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib
import signal
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import structlog

from mesh import bus
from mesh.agent import Agent
from mesh.bus import NatsServer
from mesh.errors import MeshError, RequestError
from mesh.logging import configure_logging
from mesh.runtime import RuntimeOptions
from mesh.tasks import TaskSet
from services import triage
from services.health import open_health_server
from services.http.config import BridgeConfig, config_from_settings, exposure_problem, parse_listen
from services.http.settings import HttpSettings
from services.mail.settings import MailSettings
from services.settings import LLMSettings, MeshSettings
from services.worker import close_connection, open_worker

if TYPE_CHECKING:
    from mesh.bus import Connection

log = structlog.get_logger("mesh.cli")

WORKER_GC_THRESHOLDS = (10_000, 20, 20)
"""The collector's thresholds in a worker process (CPython's are 700, 10, 10). A worker allocates
dozens of objects per request and holds up to 100,000 instances: at the defaults, young collections
ran every few requests and full ones kept pausing turns as instances accumulated (`mesh bench --only
activation --scale 0.3`: worker CPU 165 -> 115-147 us per first touch, p99 111-142 -> 21-33 ms)."""


def load_agents(spec: str) -> list[type[Agent[Any]]]:
    """`module` (its `AGENTS` list) or `module:attribute` (a list of agent classes, or one class)."""
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    found = getattr(module, attribute or "AGENTS")
    agents = [found] if isinstance(found, type) else list(found)
    for cls in agents:
        if not (isinstance(cls, type) and issubclass(cls, Agent)):
            raise TypeError(f"{spec}: {cls!r} is not an Agent subclass")
    return agents


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT (Ctrl-C) or SIGTERM: the process stops in order instead of dying."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def cmd_up(args: argparse.Namespace, settings: MeshSettings) -> int:
    configure_logging(settings.log_format, settings.log_level)
    http = _http_settings(args)
    if not _may_serve(http, "up"):
        return 2
    mail = MailSettings()
    if args.smtp:
        mail = mail.model_copy(update={"listen": args.smtp})
    if settings.nats_url:
        return await _serve(settings, settings.nats_url, http=http, mail=mail, demo_mcp=True)
    async with NatsServer(settings.store, port=settings.nats_port) as server:
        print(
            f"mesh is up: nats-server at {server.url} (store {settings.store}); "
            f"try: mesh call counter/demo '{{\"add\": 1}}' "
            f"or mesh call triage/alice '\"What is the capital of France?\"'",
            file=sys.stderr,
            flush=True,
        )
        # The server stops with this process, and with it every route to this worker: lingering
        # for peers that might still forward here would only delay the exit.
        options = dataclasses.replace(settings.runtime_options(), handover_linger=0.0)
        async with _supervised(server):
            return await _serve(settings, server.url, http=http, mail=mail, options=options, demo_mcp=True)


@contextlib.asynccontextmanager
async def _supervised(server: NatsServer) -> AsyncIterator[None]:
    """Keep `mesh up`'s own nats-server running while the block runs: restarted on the same store
    and port when it dies (with backoff, logged); the worker and the bridge reconnect on their own."""
    supervisor = TaskSet(log, "nats_server.supervisor_failed")
    supervisor.spawn(server.serve_supervised())
    try:
        yield
    finally:
        await supervisor.cancel_all()


async def cmd_worker(args: argparse.Namespace, settings: MeshSettings) -> int:
    configure_logging(settings.log_format, settings.log_level)
    return await _serve(settings, settings.url())


async def _serve(
    settings: MeshSettings,
    url: str,
    *,
    http: HttpSettings | None = None,
    mail: MailSettings | None = None,
    options: RuntimeOptions | None = None,
    demo_mcp: bool = False,
) -> int:
    """A worker for `settings.app`, plus the HTTP bridge and the SMTP service if asked, until a signal;
    with `demo_mcp` (`mesh up`), the demo's calculator MCP server when the app has the triage demo.

    Stopping goes outside in: the bridge (its requests in flight still get their replies), then
    mail, then the worker (`open_worker`), then the calculator its MCP clients used.
    """
    stop = stop_on_signals()
    llm = LLMSettings()
    agents = load_agents(settings.app)
    listen = _listen(http) if http is not None else None
    async with contextlib.AsyncExitStack() as stack:
        calculator = await stack.enter_async_context(_open_calculator(llm, agents if demo_mcp else []))
        configure_demo_model(llm, calculator)
        worker = await stack.enter_async_context(open_worker(settings, url, agents, options=options))
        async with _open_mail(worker.nc, mail, tuple(a.type for a in agents)):
            async with asyncio.TaskGroup() as tasks:
                if listen is not None:
                    assert http is not None
                    config = config_from_settings(http, listen)
                    tasks.create_task(serve_bridge(config, settings.nats_options(url, "mesh-http"), stop))
                # Everything imported and started so far lives as long as the process: out of the
                # collector's sight, it costs no full collection now nor the last one at exit.
                gc.freeze()
                gc.set_threshold(*WORKER_GC_THRESHOLDS)
                await stop.wait()
    return 0


def configure_demo_model(llm: LLMSettings, calculator_url: str | None = None) -> None:
    """The demo LLM agents (`services.triage`, in the default app) get their model from here, and
    the Math Tutor its calculator MCP server."""
    triage.configure(
        triage.ModelSettings(
            api_key=llm.api_key(),
            base_url=llm.openai_base_url,
            model=llm.model,
            openai_tracing=llm.openai_tracing,
            approval_ttl=llm.approval_ttl,
            memory_max_items=llm.memory_max_items,
            calculator_url=calculator_url,
        )
    )


@contextlib.asynccontextmanager
async def _open_calculator(llm: LLMSettings, agents: list[type[Agent[Any]]]) -> AsyncIterator[str | None]:
    """The URL of the demo calculator MCP server: `MESH_DEMO_MCP_URL`, else one served here while
    the block runs if `agents` has the triage demo (`mesh up`), else None (`off`: None)."""
    if llm.demo_mcp_url:
        yield None if llm.demo_mcp_url == "off" else llm.demo_mcp_url
        return
    if not any(issubclass(cls, triage.Triage) for cls in agents):
        yield None
        return
    from services.demo_mcp import open_demo_mcp

    async with contextlib.AsyncExitStack() as stack:
        url: str | None = None
        try:
            url = await stack.enter_async_context(open_demo_mcp())
        except OSError as exc:  # the demo goes on without it: the Math Tutor computes itself
            log.error("demo_mcp.unavailable", error=str(exc))
        else:
            print(f"demo calculator MCP server at {url} (the triage Math Tutor's tool)", file=sys.stderr, flush=True)
        yield url


@contextlib.asynccontextmanager
async def _open_mail(nc: Connection, settings: MailSettings | None, agent_types: tuple[str, ...]) -> AsyncIterator[None]:
    """The SMTP service of `mesh up` on the worker's connection, unless its listen address is `off`.

    Mail is an add-on there: if its port cannot be bound, the agents still serve, and the log says why.
    """
    if settings is None or settings.listen == "off":
        yield
        return
    from services.mail.config import MailConfig  # loaded only by a process that serves mail
    from services.mail.service import MailService

    service = MailService(nc, MailConfig.from_settings(settings, agent_types=agent_types))
    try:
        await service.start()
    except OSError as exc:
        log.error("mail.unavailable", listen=settings.listen, error=str(exc))
        yield
        return
    try:
        yield
    finally:
        await service.stop()


async def serve_bridge(config: BridgeConfig, nats: bus.NatsOptions, stop: asyncio.Event) -> None:
    """Serve the HTTP bridge until `stop` is set; a bridge that ends for any reason stops the process."""
    from services.http.server import serve_http  # loaded only by a process that serves HTTP

    print(f"HTTP bridge and dashboard at http://{config.host}:{config.port}/", file=sys.stderr, flush=True)
    if exposure_problem(config) is not None:  # allowed by --insecure
        log.warning("http.insecure", listen=f"{config.host}:{config.port}", auth=False, reachable_by="anyone on the network")
    try:
        await serve_http(config, nats, stop)
    except OSError as exc:
        raise MeshError(f"cannot serve the HTTP bridge on {config.host}:{config.port}: {exc.strerror or exc}") from exc
    finally:
        stop.set()


def _http_settings(args: argparse.Namespace) -> HttpSettings:
    settings = HttpSettings()
    if getattr(args, "insecure", False):
        settings = settings.model_copy(update={"insecure": True})
    return settings.model_copy(update={"listen": args.http}) if args.http else settings


def _may_serve(http: HttpSettings, command: str) -> bool:
    """Protected mode: no bridge on a non-loopback address without a token, unless `--insecure`."""
    listen = _listen(http)
    if listen is None or http.insecure:
        return True
    problem = exposure_problem(config_from_settings(http, listen))
    if problem is not None:
        print(f"mesh {command}: {problem}", file=sys.stderr)
        return False
    return True


def _listen(settings: HttpSettings) -> tuple[str, int] | None:
    try:
        return parse_listen(settings.listen)
    except ValueError as exc:
        raise RequestError(str(exc)) from None


async def cmd_http(args: argparse.Namespace, settings: MeshSettings) -> int:
    configure_logging(settings.log_format, settings.log_level)
    http = _http_settings(args)
    listen = _listen(http)
    if listen is None:
        print("mesh http: --http off leaves nothing to serve", file=sys.stderr)
        return 2
    if not _may_serve(http, "http"):
        return 2
    stop = stop_on_signals()
    async with open_health_server(settings.metrics_host, settings.metrics_port):
        await serve_bridge(config_from_settings(http, listen), settings.nats_options(settings.url(), "mesh-http"), stop)
    return 0


async def cmd_smtp(args: argparse.Namespace, settings: MeshSettings) -> int:
    configure_logging(settings.log_format, settings.log_level)
    mail = MailSettings()
    if args.listen:
        mail = mail.model_copy(update={"listen": args.listen})
    from services.mail.config import MailConfig  # loaded only by a process that serves mail
    from services.mail.service import MailService

    stop = stop_on_signals()
    nc = await bus.connect(settings.nats_options(settings.url(), "mesh-smtp"))
    try:
        service = MailService(nc, MailConfig.from_settings(mail))
        async with open_health_server(settings.metrics_host, settings.metrics_port, ready=lambda: nc.is_connected):
            await service.start()
            try:
                await stop.wait()
            finally:
                await service.stop()
    finally:
        await close_connection(nc)
    return 0
