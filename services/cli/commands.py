"""The `mesh` subcommands that connect as a client, ask or tell the mesh something, print and exit."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

import orjson

from mesh import bus, deadletters, subjects, timeline
from mesh.client import MeshClient
from mesh.errors import BadJson
from services.settings import MeshSettings


async def _client(args: argparse.Namespace, settings: MeshSettings) -> MeshClient:
    """A client for one command: no reconnecting, a server that is not there is an error at once."""
    return MeshClient(await bus.connect(settings.nats_options(settings.url(), "mesh-cli"), reconnect=False))


async def cmd_call(args: argparse.Namespace, settings: MeshSettings) -> int:
    agent_type, name = subjects.parse_address(args.address)
    try:
        orjson.loads(args.payload)
    except orjson.JSONDecodeError as exc:
        print(f"mesh: error [bad_json]: the payload argument is not JSON: {exc}", file=sys.stderr)
        return 2
    payload = args.payload.encode()  # as typed: orjson would turn an integer beyond 64 bits into a float
    async with await _client(args, settings) as client:
        reply = await client.call(agent_type, name, payload, timeout=args.timeout, method=args.method, request_id=args.request_id)
    print(orjson.dumps(reply).decode())
    return 0


async def cmd_new(args: argparse.Namespace, settings: MeshSettings) -> int:
    """Print a fresh instance name of a served type (`POST /agents/{type}` over HTTP)."""
    agent_type = subjects.check_type(args.type)
    async with await _client(args, settings) as client:
        served = {info["name"] for info in await client.services()}
    if agent_type not in served:
        print(f"mesh: no worker serves agent type {agent_type}", file=sys.stderr)
        return 1
    print(MeshClient.new_name(agent_type))
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
            bucket = await bus.bind_bucket(client.nc, subjects.STATE_BUCKET)
            keys = [] if bucket is None else await bucket.keys(f"{args.type}.")
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
    _json_arg(args.payload, "payload argument")
    payload = args.payload.encode()  # as typed (see cmd_call)
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
    from services.bench.cli import cmd_bench as run_bench  # the bench's modules load only for `mesh bench`

    return await run_bench(args)
