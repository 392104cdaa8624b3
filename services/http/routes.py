"""HTTP routes that mirror subjects: each one validates, sends one NATS request, and maps the reply.

    POST /agents/{type}/{name}                      -> request on agents.<type>.<token>
    GET  /agents/{type}/{name}/state                -> KV mesh_state <type>.<token>
    GET  /agents                                    -> $SRV.INFO (discovery)
    GET  /agents/{type}                             -> keys <type>.* of mesh_state
    GET  /agents/{type}/{name}/approvals            -> {"op": "approvals"} on agents.<type>.<token>
    POST /agents/{type}/{name}/approvals/{id}/{approve|reject} -> {"op": "approve"|"reject", ...} there
    GET  /runs/{id}                                 -> KV mesh_http_runs <id>
    POST /auth/tickets                              -> a ticket for EventSource / WebSocket

Path segments go through `mesh.subjects`, so no URL can spell a wildcard, an extra token or a
system subject.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mesh import subjects
from mesh.errors import (
    BadJson,
    ConnectionFailed,
    MeshError,
    MeshTimeout,
    OutcomeUnknown,
    PayloadTooLarge,
    RequestError,
)
from services.http.bridge import Bridge
from services.http.errors import NotFound
from services.http.idempotency import IdempotencyStore, fingerprint, request_id
from services.http.problems import problem
from services.http.runs import RunStore, new_run_id

JSON = "application/json"
INTERRUPTED = "the bridge stopped before the agent replied; the request may have run"


@dataclass(frozen=True)
class Preferences:
    """The `Prefer` header (RFC 7240): `respond-async` and `wait=<seconds>`."""

    respond_async: bool = False
    wait: float | None = None

    @classmethod
    def parse(cls, header: str | None) -> Preferences:
        respond_async, wait = False, None
        for item in (header or "").split(","):
            token, _, value = item.strip().partition("=")
            token = token.strip().lower()
            if token == "respond-async":
                respond_async = True
            elif token == "wait":
                try:
                    seconds = float(value.strip().strip('"'))
                except ValueError:
                    continue
                if seconds > 0:
                    wait = seconds
        return cls(respond_async, wait)


def bridge_of(request: Request) -> Bridge:
    bridge: Bridge = request.app.state.bridge
    return bridge


def address(request: Request) -> tuple[str, str]:
    agent_type = subjects.check_type(request.path_params["type"])
    name = request.path_params["name"]
    subjects.encode_name(name)
    return agent_type, name


def principal_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("principal", ""))


async def read_json_body(request: Request, limit: int) -> bytes:
    """The body, at most `limit` bytes and valid JSON (an empty body counts as `null`)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"body of {length} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks).strip() or b"null"
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadJson(f"body is not valid JSON: {exc}") from exc
    return body


async def post_agent(request: Request) -> Response:
    bridge = bridge_of(request)
    agent_type, name = address(request)
    body = await read_json_body(request, bridge.max_body)
    prefer = Preferences.parse(request.headers.get("prefer"))
    key = request.headers.get("idempotency-key")
    if key is None:
        return await _run_or_start(request, bridge, agent_type, name, body, prefer)
    store = IdempotencyStore(bridge.idempotency)
    storage_key = store.storage_key(principal_of(request), "POST", request.url.path, key)
    wait = 5.0 if prefer.respond_async else _wait(bridge, prefer)
    claimed = await store.claim(storage_key, fingerprint(body + (b"\0async" if prefer.respond_async else b"")), wait)
    if isinstance(claimed, Response):
        return claimed
    error: MeshError | None = None
    try:
        # The mesh runs one request id at most once: a retry of this key that resends it is safe.
        response = await _run_or_start(request, bridge, agent_type, name, body, prefer, request_id(storage_key))
    except MeshError as err:
        response, error = problem(err, request.url.path), err
    except asyncio.CancelledError:
        # The request may have run: keep the key, so a retry finds out instead of running it again.
        cut_short = OutcomeUnknown(INTERRUPTED)
        bridge.spawn(store.finish(claimed, problem(cut_short, request.url.path), cut_short))
        raise
    await store.finish(claimed, response, error)
    return response


def _wait(bridge: Bridge, prefer: Preferences) -> float:
    return min(prefer.wait, bridge.config.timeout) if prefer.wait else bridge.config.timeout


async def _run_or_start(
    request: Request,
    bridge: Bridge,
    agent_type: str,
    name: str,
    body: bytes,
    prefer: Preferences,
    request_id: str | None = None,
) -> Response:
    if prefer.respond_async:
        runs = RunStore(bridge.runs)
        record = await runs.create(new_run_id(), agent_type, name)
        bridge.spawn(_finish_run(bridge, runs, record, body, request_id))
        location = f"/runs/{record['id']}"
        return JSONResponse(
            record,
            status_code=202,
            headers={"Location": location, "Preference-Applied": "respond-async", "Retry-After": "1"},
        )
    reply = await bridge.call(agent_type, name, body, _wait(bridge, prefer), request_id=request_id)
    return Response(reply, media_type=JSON)


async def _finish_run(bridge: Bridge, runs: RunStore, record: dict[str, Any], body: bytes, request_id: str | None) -> None:
    agent = record["agent"]
    try:
        reply = await bridge.call(agent["type"], agent["name"], body, bridge.config.async_timeout, request_id=request_id)
    except MeshError as err:
        await runs.finish(record, None, err)
        return
    except asyncio.CancelledError:  # the bridge is stopping: say so rather than stay pending until expiry
        await runs.finish(record, None, MeshTimeout(INTERRUPTED))
        raise
    await runs.finish(record, reply, None)


async def get_run(request: Request) -> Response:
    record = await RunStore(bridge_of(request).runs).get(request.path_params["id"])
    if record["status"] == "pending":
        return JSONResponse(record, status_code=202, headers={"Retry-After": "1"})
    return JSONResponse(record)


async def get_state(request: Request) -> Response:
    agent_type, name = address(request)
    found = await bridge_of(request).read_state(agent_type, name)
    if found is None:
        raise NotFound(f"{agent_type}/{name} has no stored state")
    value, revision = found
    body = b'{"type":%s,"name":%s,"revision":%d,"state":%s}' % (
        orjson.dumps(agent_type),
        orjson.dumps(name),
        revision,
        value,
    )
    return Response(body, media_type=JSON)


async def list_types(request: Request) -> Response:
    types = await bridge_of(request).types()
    return JSONResponse({"types": [{"type": t.type, "workers": len(t.workers), "description": t.description} for t in types]})


async def list_instances(request: Request) -> Response:
    agent_type = subjects.check_type(request.path_params["type"])
    names = await bridge_of(request).instances(agent_type)
    return JSONResponse({"type": agent_type, "instances": names})


async def list_approvals(request: Request) -> Response:
    agent_type, name = address(request)
    bridge = bridge_of(request)
    if not await bridge.supports_approvals(agent_type):
        return JSONResponse({"pending": [], "decisions": []})  # never send control messages to other agents
    reply = await bridge.call(agent_type, name, b'{"op":"approvals"}', bridge.config.timeout)
    return Response(reply, media_type=JSON)


async def decide_approval(request: Request) -> Response:
    agent_type, name = address(request)
    bridge = bridge_of(request)
    approval_id = request.path_params["id"]
    decision = request.path_params["decision"]
    if decision not in ("approve", "reject"):
        raise NotFound(f"no route for POST {request.url.path[:200]}")
    body = orjson.loads(await read_json_body(request, bridge.max_body))
    if body is not None and not (
        isinstance(body, dict) and set(body) <= {"reason"} and isinstance(body.get("reason"), str | None)
    ):
        raise RequestError('body must be empty or {"reason": "<text>"}')
    if not await bridge.supports_approvals(agent_type):
        raise NotFound(f"agent type {agent_type} has no approvals")
    message: dict[str, Any] = {"op": decision, "id": approval_id, "by": principal_of(request) or "http"}
    if body and body.get("reason") is not None:
        message["reason"] = body["reason"]
    # Approving resumes the run (model calls): `Prefer: respond-async` works here as on any POST.
    prefer = Preferences.parse(request.headers.get("prefer"))
    return await _run_or_start(request, bridge, agent_type, name, orjson.dumps(message), prefer)


async def create_ticket(request: Request) -> Response:
    auth = request.app.state.auth
    return JSONResponse({"ticket": auth.issue_ticket(principal_of(request)), "expires_in": auth.ticket_ttl})


async def healthz(request: Request) -> Response:
    bridge = bridge_of(request)
    if not bridge.nc.is_connected:
        return problem(ConnectionFailed("the bridge is not connected to NATS"), request.url.path)
    return JSONResponse({"status": "ok"})
