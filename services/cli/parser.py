"""The arguments of every `mesh` subcommand; `mesh --help` and `mesh SUBCOMMAND --help` are built from here.

Flags override the environment (`MESH_*`, `NATS_URL`), which overrides the defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

from services.bench.cli import add_parser as add_bench_parser

INSECURE_HELP = (
    "serve the HTTP bridge on a non-loopback address without bearer tokens (MESH_HTTP_TOKENS): "
    "anyone who can reach it may call every agent"
)


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
    up.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
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
    call.add_argument("--method", help="run this @mesh.method of the agent instead of on_request")
    call.add_argument(
        "--id",
        dest="request_id",
        help="request id (Mesh-Request-Id): a repeat within 2 minutes gets the first reply and runs nothing",
    )

    new = with_nats(commands.add_parser("new", help="print a fresh, unique instance name of TYPE"))
    new.add_argument("type", help="agent type (it must be served)")

    mcp = with_nats(
        commands.add_parser("mcp", help="serve the mesh's agents as MCP tools to a client that launches this command")
    )
    mcp.add_argument("--stdio", action="store_true", required=True, help="speak MCP on stdin/stdout (the only transport here)")
    mcp.add_argument("--timeout", type=float, default=30.0, help="seconds a tool call waits for the agent's reply")
    mcp.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="env MESH_LOG_LEVEL (logs go to stderr)")

    state = with_nats(commands.add_parser("state", help="print the stored state of TYPE/NAME as JSON"))
    state.add_argument("address")

    http = with_nats(commands.add_parser("http", help="serve the HTTP bridge and dashboard against a NATS server"))
    http.add_argument("--http", "--listen", dest="http", help="HOST:PORT (env MESH_HTTP; default 127.0.0.1:8080)")
    http.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
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
