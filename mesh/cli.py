"""The `mesh` command: run the mesh (`up`, `worker`, `smtp`) and talk to it (`call`, `state`, `ls`,
`send`, `schedule`, `dead-letters`, `approvals`, `approve`, `reject`, `clear-memory`)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import structlog
from nats.aio.client import Client

from mesh import bus, deadletters, metrics, subjects, timeline
from mesh.agent import Agent
from mesh.client import MeshClient
from mesh.delivery import DurableDelivery
from mesh.errors import BadJson, MeshError
from mesh.health import open_health_server
from mesh.logging import configure_logging
from mesh.observe import Observer
from mesh.recorder import EventsLimits, FlightRecorder
from mesh.runtime import Runtime
from mesh.server import NatsServer
from mesh.settings import MailSettings, MeshSettings

DEFAULT_URL = "nats://127.0.0.1:4222"


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh", description="Addressable, stateful agents on NATS.")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_nats(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--nats-url", help="NATS server URL(s), comma separated (env NATS_URL)")
        return p

    def with_runtime(p: argparse.ArgumentParser) -> None:
        p.add_argument("--app", help="module listing agent classes (env MESH_APP; default services.demo)")
        p.add_argument("--log-format", choices=["console", "json"], help="env MESH_LOG_FORMAT")
        p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="env MESH_LOG_LEVEL")
        p.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /readyz here (env MESH_METRICS_PORT)")

    up = with_nats(commands.add_parser("up", help="start an embedded nats-server (unless --nats-url) and a worker"))
    with_runtime(up)
    up.add_argument("--nats-port", type=int, help="embedded server port (env MESH_NATS_PORT; default 4222)")
    up.add_argument("--store", help="embedded server store directory (env MESH_STORE; default .mesh)")
    up.add_argument("--http", help="HOST:PORT of the HTTP bridge, or off (env MESH_HTTP; default 127.0.0.1:8080)")
    up.add_argument(
        "--smtp", help="HOST:PORT for the SMTP ingestion service, or `off` (env MESH_SMTP_LISTEN; default 127.0.0.1:2525)"
    )

    smtp = with_nats(commands.add_parser("smtp", help="run the SMTP ingestion service alone (agents reachable by mail)"))
    smtp.add_argument("--listen", help="HOST:PORT to accept mail on (env MESH_SMTP_LISTEN; default 127.0.0.1:2525)")
    smtp.add_argument("--log-format", choices=["console", "json"], help="env MESH_LOG_FORMAT")
    smtp.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="env MESH_LOG_LEVEL")

    worker = with_nats(commands.add_parser("worker", help="run one more worker process for the same agents"))
    with_runtime(worker)

    call = with_nats(commands.add_parser("call", help="send a request to TYPE/NAME and print the reply"))
    call.add_argument("address", help="TYPE/NAME, e.g. counter/demo")
    call.add_argument("payload", nargs="?", default="null", help="JSON request body")
    call.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")

    state = with_nats(commands.add_parser("state", help="print the stored state of TYPE/NAME as JSON"))
    state.add_argument("address")

    http = with_nats(commands.add_parser("http", help="serve the HTTP bridge and dashboard against a NATS server"))
    http.add_argument("--http", "--listen", dest="http", help="HOST:PORT (env MESH_HTTP; default 127.0.0.1:8080)")
    http.add_argument("--log-format", choices=["console", "json"], help="env MESH_LOG_FORMAT")
    http.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="env MESH_LOG_LEVEL")

    ls = with_nats(commands.add_parser("ls", help="list agent types and the workers serving them"))
    ls.add_argument("type", nargs="?", help="list this type's stored instances instead")

    tail = with_nats(commands.add_parser("tail", help="follow events live: all, one TYPE, or one TYPE/NAME"))
    tail.add_argument("address", nargs="?", help="TYPE or TYPE/NAME (default: every instance)")
    tail.add_argument("--trace", help="only events of this trace id")
    tail.add_argument("--count", type=int, help="exit after this many events")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")

    history = with_nats(commands.add_parser("history", help="print the recent timeline of TYPE/NAME"))
    history.add_argument("address", help="TYPE/NAME")
    history.add_argument("--limit", type=int, default=100, help="newest events to print (default 100)")
    history.add_argument("--trace", help="only events of this trace id")
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    add_durable_commands(commands, with_nats)

    approvals = with_nats(commands.add_parser("approvals", help="list the pending approvals of an LLM instance"))
    approvals.add_argument("address", help="TYPE/NAME of an LLM agent instance")
    approvals.add_argument("--json", action="store_true", help="print the raw reply (decisions included)")
    for verb in ("approve", "reject"):
        p = with_nats(commands.add_parser(verb, help=f"{verb} a pending tool call; the paused run then resumes"))
        p.add_argument("address", help="TYPE/NAME of an LLM agent instance")
        p.add_argument("id", help="approval id, as `mesh approvals` lists it")
        p.add_argument("--reason", help="why (recorded; a rejection's reason is told to the model)")
        p.add_argument("--by", help="who decides (default: the login name)")
        p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the resumed run")
    clear = with_nats(commands.add_parser("clear-memory", help="forget an LLM instance's conversation"))
    clear.add_argument("address", help="TYPE/NAME of an LLM agent instance")
    from mesh.bench.cli import add_parser as add_bench_parser

    add_bench_parser(commands)
    return parser


def add_durable_commands(commands: Any, with_nats: Any) -> None:
    send = with_nats(commands.add_parser("send", help="store a durable message for TYPE/NAME (runs once, even across crashes)"))
    send.add_argument("address", help="TYPE/NAME")
    send.add_argument("payload", nargs="?", default="null", help="JSON message body")
    send.add_argument("--id", dest="msg_id", help="message id (Nats-Msg-Id); a repeat within 2 minutes is stored once")
    send.add_argument("--method", help="run this @mesh.method of the agent instead of on_request")

    sched = commands.add_parser("schedule", help="add, list or cancel schedules")
    verbs = sched.add_subparsers(dest="verb", required=True)
    add = with_nats(verbs.add_parser("add", help="register (or replace) schedule ID of TYPE/NAME"))
    add.add_argument("address", help="TYPE/NAME")
    add.add_argument("id", help="schedule id: letters, digits, - and _ (1 to 64)")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--at", help="once, at this RFC 3339 time with a zone, e.g. 2026-12-01T09:00:00Z")
    when.add_argument("--in", dest="delay", type=float, help="once, after this many seconds")
    when.add_argument("--every", help="repeatedly, e.g. 30s, 5m, 1h")
    when.add_argument("--cron", help='on a 6-field cron expression (seconds first), e.g. "0 0 9 * * *"')
    add.add_argument("--payload", default="null", help="JSON body delivered each time")
    add.add_argument("--method", help="run this @mesh.method of the agent instead of on_request")
    sls = with_nats(verbs.add_parser("ls", help="list schedules, optionally of TYPE or TYPE/NAME"))
    sls.add_argument("address", nargs="?")
    cancel = with_nats(verbs.add_parser("cancel", help="cancel schedule ID of TYPE/NAME"))
    cancel.add_argument("address", help="TYPE/NAME")
    cancel.add_argument("id")

    dead = commands.add_parser("dead-letters", help="list, re-drive or drop durable messages that kept failing")
    dverbs = dead.add_subparsers(dest="verb")
    with_nats(dverbs.add_parser("ls", help="list dead letters (the default)"))
    redrive = with_nats(dverbs.add_parser("redrive", help="send dead letters to their instance again"))
    redrive.add_argument("seq", nargs="*", type=int, help="sequence numbers to re-drive")
    redrive.add_argument("--all", action="store_true", help="re-drive every dead letter")
    drop = with_nats(dverbs.add_parser("drop", help="delete dead letters without re-driving them"))
    drop.add_argument("seq", nargs="+", type=int)
    with_nats(dead)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = MeshSettings()
    overrides = {
        k: v
        for k, v in vars(args).items()
        if k in {"nats_url", "nats_port", "store", "app", "log_format", "log_level", "http", "metrics_port"} and v is not None
    }
    settings = settings.model_copy(update=overrides)
    try:
        return asyncio.run(COMMANDS[args.command](args, settings))
    except MeshError as exc:
        print(f"mesh: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def cmd_up(args: argparse.Namespace, settings: MeshSettings) -> int:
    configure_logging(settings.log_format, settings.log_level)
    if settings.nats_url:
        return await _serve(settings, settings.nats_url, smtp=_smtp_listen(args), http=True)
    server = NatsServer(settings.store, port=settings.nats_port)
    await server.start()
    try:
        print(
            f"mesh is up: nats-server at {server.url} (store {settings.store}); "
            f"try: mesh call counter/demo '{{\"add\": 1}}' "
            f"or mesh call triage/alice '\"What is the capital of France?\"'",
            file=sys.stderr,
            flush=True,
        )
        return await _serve(settings, server.url, smtp=_smtp_listen(args), http=True)
    finally:
        server.stop()


async def cmd_worker(args: argparse.Namespace, settings: MeshSettings) -> int:
    configure_logging(settings.log_format, settings.log_level)
    return await _serve(settings, settings.nats_url or DEFAULT_URL)


def _smtp_listen(args: argparse.Namespace) -> str:
    """`mesh up` starts the SMTP service unless `--smtp off` (or MESH_SMTP_LISTEN=off)."""
    return args.smtp or MailSettings().listen


async def _serve(settings: MeshSettings, url: str, *, smtp: str = "off", http: bool = False) -> int:
    agents = load_agents(settings.app)
    nc = await bus.connect(settings.nats_options(url, "mesh-worker"))
    stop = _stop_on_signals()
    observers: list[Observer] = [metrics.MetricsObserver()]
    recorder = None
    if settings.recorder:
        limits = EventsLimits(settings.events_max_age, settings.events_max_msgs, settings.events_max_bytes, settings.replicas)
        recorder = FlightRecorder(nc, limits=limits)
        await recorder.start()
        observers.append(recorder)
    otel = _otel_observer(settings)
    if otel is not None:
        observers.append(otel)
    runtime = Runtime(nc, agents, options=settings.runtime_options(), observers=observers)
    mail = None
    bridge: asyncio.Task[None] | None = None
    try:
        async with open_health_server(
            settings.metrics_host,
            settings.metrics_port,
            ready=runtime.ready,
            collector=metrics.RuntimeCollector(runtime),
        ):
            await runtime.start()
            if smtp != "off":
                from services.mail import MailConfig, MailService

                mail_settings = MailSettings().model_copy(update={"listen": smtp})
                config = MailConfig.from_settings(mail_settings, agent_types=tuple(a.type for a in agents))
                mail = MailService(nc, config)
                try:
                    await mail.start()
                except OSError as exc:  # mail is an add-on of `mesh up`: the agents still serve without it
                    structlog.get_logger("mesh.mail").error("mail.unavailable", listen=smtp, error=str(exc))
                    mail = None
            delivery = DurableDelivery(runtime, settings.durable_options())
            try:
                await delivery.start()
                bridge = _start_http(settings, url, stop) if http else None
                await stop.wait()
            finally:
                if bridge is not None:
                    await asyncio.gather(bridge, return_exceptions=True)
                if mail is not None:
                    await mail.stop()
                # Stop pulling first (in-flight deliveries finish and are acked), then stop taking turns.
                deadline = time.monotonic() + settings.shutdown_grace
                await delivery.stop(grace=settings.shutdown_grace)
                await runtime.stop(grace=max(0.5, deadline - time.monotonic()))
    finally:
        if recorder is not None:
            await recorder.stop()
        if otel is not None:
            otel.shutdown()
        await _close(nc)
    if bridge is not None and not bridge.cancelled() and bridge.exception() is not None:
        raise bridge.exception()  # type: ignore[misc]
    return 0


async def _close(nc: Client) -> None:
    """Flush what is queued, but never let a stuck subscription (or a vanished server) hold the exit."""
    try:
        await asyncio.wait_for(nc.drain(), 5)
    except Exception:
        await nc.close()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _start_http(settings: MeshSettings, url: str, stop: asyncio.Event) -> asyncio.Task[None] | None:
    """Serve the HTTP bridge in this process until `stop` is set (None when `--http off`)."""
    from services.http.config import config_from_settings, parse_listen
    from services.http.server import serve_http

    listen = parse_listen(settings.http)
    if listen is None:
        return None
    config = config_from_settings(settings, listen)
    task = asyncio.get_running_loop().create_task(serve_http(config, settings.nats_options(url, "mesh-http"), stop))
    task.add_done_callback(lambda t: stop.set())  # a bridge that cannot serve stops the process
    print(f"HTTP bridge and dashboard at http://{config.host}:{config.port}/", file=sys.stderr, flush=True)
    return task


async def cmd_http(args: argparse.Namespace, settings: MeshSettings) -> int:
    configure_logging(settings.log_format, settings.log_level)
    stop = _stop_on_signals()
    url = settings.nats_url or DEFAULT_URL
    async with open_health_server(settings.metrics_host, settings.metrics_port):
        bridge = _start_http(settings, url, stop)
        if bridge is None:
            print("mesh http: --http off leaves nothing to serve", file=sys.stderr)
            return 2
        await stop.wait()
        await bridge
    return 0


async def cmd_smtp(args: argparse.Namespace, settings: MeshSettings) -> int:
    from services.mail import MailConfig, MailService

    configure_logging(settings.log_format, settings.log_level)
    mail_settings = MailSettings()
    if args.listen:
        mail_settings = mail_settings.model_copy(update={"listen": args.listen})
    nc = await bus.connect(settings.nats_options(settings.nats_url or DEFAULT_URL, "mesh-smtp"))
    stop = _stop_on_signals()
    service = MailService(nc, MailConfig.from_settings(mail_settings))
    try:
        async with open_health_server(settings.metrics_host, settings.metrics_port, ready=lambda: nc.is_connected):
            await service.start()
            try:
                await stop.wait()
            finally:
                await service.stop()
    finally:
        await _close(nc)
    return 0


def _otel_observer(settings: MeshSettings) -> Any:
    if not settings.otel:
        return None
    from mesh import otel

    return otel.from_environment()


async def _client(args: argparse.Namespace, settings: MeshSettings) -> MeshClient:
    url = settings.nats_url or DEFAULT_URL
    return MeshClient(await bus.connect(settings.nats_options(url, "mesh-cli"), reconnect=False))


async def cmd_call(args: argparse.Namespace, settings: MeshSettings) -> int:
    agent_type, name = subjects.parse_address(args.address)
    try:
        payload = orjson.loads(args.payload)
    except orjson.JSONDecodeError as exc:
        print(f"mesh: error [bad_json]: the payload argument is not JSON: {exc}", file=sys.stderr)
        return 2
    async with await _client(args, settings) as client:
        reply = await client.call(agent_type, name, payload, timeout=args.timeout)
    print(orjson.dumps(reply).decode())
    return 0


async def cmd_state(args: argparse.Namespace, settings: MeshSettings) -> int:
    agent_type, name = subjects.parse_address(args.address)
    async with await _client(args, settings) as client:
        state = await client.state(agent_type, name)
    if state is None:
        print(f"mesh: {agent_type}/{name} has no stored state", file=sys.stderr)
        return 1
    print(orjson.dumps(state).decode())
    return 0


async def cmd_ls(args: argparse.Namespace, settings: MeshSettings) -> int:
    async with await _client(args, settings) as client:
        if args.type:
            subjects.check_type(args.type)
            js = client.nc.jetstream()
            kv = await bus.bind_bucket(js, subjects.STATE_BUCKET)
            keys = [] if kv is None else await bus.Bucket(kv, js, subjects.STATE_BUCKET).keys(f"{args.type}.")
            for key in sorted(keys):
                print(subjects.decode_name(key.split(".", 1)[1]))
            return 0
        services = await client.services()
    by_type: dict[str, list[str]] = {}
    for info in services:
        by_type.setdefault(info["name"], []).append(info["metadata"].get("mesh.worker", "?"))
    if not by_type:
        print("no agent types are being served", file=sys.stderr)
        return 1
    print(f"{'TYPE':<24} {'WORKERS':>7}  WORKER IDS")
    for agent_type in sorted(by_type):
        workers = sorted(by_type[agent_type])
        print(f"{agent_type:<24} {len(workers):>7}  {' '.join(workers)}")
    return 0


async def cmd_tail(args: argparse.Namespace, settings: MeshSettings) -> int:
    subject = timeline.filter_subject(args.address)
    seen = 0
    async with await _client(args, settings) as client:
        events = timeline.follow(client.nc, subject)
        print(f"mesh: following {subject} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        async for event in events:
            if args.trace and event.trace_id != args.trace:
                continue
            _print_event(event, args.json)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
        await events.aclose()
    return 0


async def cmd_history(args: argparse.Namespace, settings: MeshSettings) -> int:
    subject = timeline.filter_subject(args.address)
    if "/" not in args.address:
        subjects.parse_address(args.address)  # a clear name_invalid for a bare TYPE
    async with await _client(args, settings) as client:
        events = await timeline.history(client.nc, subject, limit=args.limit)
    events = [e for e in events if not args.trace or e.trace_id == args.trace]
    if not events:
        print(f"mesh: no recorded events for {args.address}", file=sys.stderr)
        return 1
    for event in events:
        _print_event(event, args.json)
    return 0


def _print_event(event: timeline.Event, as_json: bool) -> None:
    print(orjson.dumps(event.to_json()).decode() if as_json else event.line(), flush=True)


def _json_arg(text: str, what: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadJson(f"the {what} is not JSON: {exc}") from exc


async def cmd_send(args: argparse.Namespace, settings: MeshSettings) -> int:
    agent_type, name = subjects.parse_address(args.address)
    payload = _json_arg(args.payload, "payload argument")
    async with await _client(args, settings) as client:
        seq = await client.send_durable(agent_type, name, payload, msg_id=args.msg_id, method=args.method)
    print(orjson.dumps({"stream": subjects.DURABLE_STREAM, "seq": seq}).decode())
    return 0


async def cmd_schedule(args: argparse.Namespace, settings: MeshSettings) -> int:
    async with await _client(args, settings) as client:
        if args.verb == "add":
            agent_type, name = subjects.parse_address(args.address)
            at = None
            if args.at:
                try:
                    at = datetime.fromisoformat(args.at.replace("Z", "+00:00"))
                except ValueError as exc:
                    raise BadJson(f"--at {args.at!r} is not an RFC 3339 time") from exc
            payload = _json_arg(args.payload, "--payload")
            await client.schedule(
                agent_type,
                name,
                args.id,
                payload,
                at=at,
                delay=args.delay,
                every=args.every,
                cron=args.cron,
                method=args.method,
            )
            print(f"schedule {args.id} of {agent_type}/{name} registered", file=sys.stderr)
            return 0
        if args.verb == "cancel":
            agent_type, name = subjects.parse_address(args.address)
            if not await client.cancel_schedule(agent_type, name, args.id):
                print(f"mesh: {agent_type}/{name} has no schedule {args.id}", file=sys.stderr)
                return 1
            print(f"schedule {args.id} of {agent_type}/{name} cancelled", file=sys.stderr)
            return 0
        of_type: str | None = None
        of_name: str | None = None
        if args.address and "/" in args.address:
            of_type, of_name = subjects.parse_address(args.address)
        elif args.address:
            of_type = subjects.check_type(args.address)
        found = await client.schedules(of_type, of_name)
    for info in found:
        print(orjson.dumps(info.model_dump()).decode())
    return 0


async def cmd_dead_letters(args: argparse.Namespace, settings: MeshSettings) -> int:
    async with await _client(args, settings) as client:
        js = client.nc.jetstream()
        if args.verb == "redrive":
            seqs = [d.seq for d in await deadletters.list_dead(js)] if args.all else args.seq
            for seq in seqs:
                ack = await deadletters.redrive(js, seq)
                print(f"dead letter {seq} re-driven as {subjects.DURABLE_STREAM} message {ack.seq}", file=sys.stderr)
            return 0
        if args.verb == "drop":
            missing = [seq for seq in args.seq if not await deadletters.drop(js, seq)]
            for seq in missing:
                print(f"mesh: there is no dead letter {seq}", file=sys.stderr)
            return 1 if missing else 0
        letters = await deadletters.list_dead(js)  # no MESH_DEAD stream yet: nothing ever failed
    for letter in letters:
        print(orjson.dumps(letter.model_dump(mode="json")).decode())
    return 0


async def cmd_approvals(args: argparse.Namespace, settings: MeshSettings) -> int:
    agent_type, name = subjects.parse_address(args.address)
    async with await _client(args, settings) as client:
        reply = await client.call(agent_type, name, {"op": "approvals"})
    if args.json:
        print(orjson.dumps(reply).decode())
        return 0
    pending = [p for p in reply.get("pending", []) if p.get("decision") is None]
    if not pending:
        print(f"{args.address} has no pending approvals", file=sys.stderr)
        return 0
    print(f"{'ID':<14} {'TOOL':<20} {'EXPIRES AT':<27} ARGUMENTS")
    for p in pending:
        print(f"{p['id']:<14} {p['tool']:<20} {p['expires_at']:<27} {p['arguments']}")
    return 0


async def cmd_decide(args: argparse.Namespace, settings: MeshSettings) -> int:
    agent_type, name = subjects.parse_address(args.address)
    request = {"op": args.command, "id": args.id, "by": args.by or _login(), "reason": args.reason}
    async with await _client(args, settings) as client:
        reply = await client.call(agent_type, name, request, timeout=args.timeout)
    print(orjson.dumps(reply).decode())
    return 0


async def cmd_clear_memory(args: argparse.Namespace, settings: MeshSettings) -> int:
    agent_type, name = subjects.parse_address(args.address)
    async with await _client(args, settings) as client:
        reply = await client.call(agent_type, name, {"op": "clear_memory"})
    print(orjson.dumps(reply).decode())
    return 0


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


async def cmd_bench(args: argparse.Namespace, settings: MeshSettings) -> int:
    from mesh.bench.cli import cmd_bench as run

    return await run(args)


COMMANDS = {
    "up": cmd_up,
    "worker": cmd_worker,
    "call": cmd_call,
    "state": cmd_state,
    "ls": cmd_ls,
    "send": cmd_send,
    "schedule": cmd_schedule,
    "dead-letters": cmd_dead_letters,
    "smtp": cmd_smtp,
    "approvals": cmd_approvals,
    "approve": cmd_decide,
    "reject": cmd_decide,
    "clear-memory": cmd_clear_memory,
    "bench": cmd_bench,
    "http": cmd_http,
    "tail": cmd_tail,
    "history": cmd_history,
}

if __name__ == "__main__":
    sys.exit(main())
