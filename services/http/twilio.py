"""Twilio's voice webhook: `POST /agents/{type}/{name}/call` answers TwiML that streams the call here.

    Twilio console, phone number -> Voice -> "A call comes in": Webhook, HTTP POST,
    https://HOST/agents/receptionist/desk/call

The answer connects the call's audio to this bridge's media stream route:

    <Response><Connect><Stream url="wss://HOST/agents/receptionist/desk/media-stream">
      <Parameter name="from" value="+15551230000"/></Stream></Connect></Response>

with the scheme and host the request came in on (`MESH_PUBLIC_URL` instead, when set: the address
Twilio reaches the bridge at, behind a proxy or a tunnel). With `TWILIO_AUTH_TOKEN` set, every
webhook and stream must carry a valid `X-Twilio-Signature` (base64 HMAC-SHA1, keyed by the token,
of the full URL followed by the sorted POST parameters, each name then value); anything else is
403. Without it the routes work unauthenticated, and the bridge logs that once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import importlib
import sys
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote
from xml.sax.saxutils import quoteattr

import structlog
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from mesh import subjects
from mesh.errors import PayloadTooLarge
from services.http.bridge import Bridge
from services.http.config import BridgeConfig
from services.http.errors import Forbidden, NotFound

log = structlog.get_logger("services.http.twilio")

MAX_FORM_BYTES = 64 * 1024
TWIML = "text/xml"
_warned = False
_warming: asyncio.Future[Any] | None = None


def signature(token: str, url: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """`X-Twilio-Signature` as Twilio computes it: the URL, then each parameter's name and value,
    sorted by name (and value), HMAC-SHA1 with the auth token, base64."""
    data = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def signed(config: BridgeConfig, headers: Headers, url: str, params: Iterable[tuple[str, str]] = ()) -> bool:
    """True when the request may be served: it carries a valid signature, or no token is set."""
    token = config.twilio_auth_token
    if not token:
        warn_unsigned()
        return True
    given = headers.get("x-twilio-signature", "")
    return bool(given) and hmac.compare_digest(given.encode(), signature(token, url, params).encode())


def warn_unsigned() -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("phone.unauthenticated", hint="set TWILIO_AUTH_TOKEN so only Twilio can start and stream calls")


def warm_up() -> None:
    """Import the realtime SDK in a thread while Twilio opens the stream: it takes seconds in a
    fresh process, which would otherwise be silence at the start of the first call."""
    global _warming
    if _warming is None and "agents.realtime" not in sys.modules:
        warming: asyncio.Future[Any] = asyncio.ensure_future(asyncio.to_thread(importlib.import_module, "agents.realtime"))
        warming.add_done_callback(lambda done: done.cancelled() or done.exception())
        _warming = warming


def public_url(config: BridgeConfig, scheme: str, headers: Headers, path: str, query: str) -> str:
    """The URL the client used (as Twilio signed it): `MESH_PUBLIC_URL` + path, or scheme://host + path."""
    base = config.public_url or f"{scheme}://{headers.get('host', '')}"
    if config.public_url and scheme in ("ws", "wss"):
        base = "ws" + base.removeprefix("http")  # http -> ws, https -> wss
    return base + path + (f"?{query}" if query else "")


def stream_url(config: BridgeConfig, request: Request, agent_type: str, name: str) -> str:
    scheme = "wss" if request.url.scheme == "https" else "ws"
    path = f"/agents/{agent_type}/{quote(name, safe='')}/media-stream"
    return public_url(config, scheme, request.headers, path, "")


def twiml(url: str, parameters: Mapping[str, str]) -> str:
    params = "".join(f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in parameters.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Connect><Stream url={quoteattr(url)}>{params}</Stream></Connect></Response>"
    )


async def call_webhook(request: Request) -> Response:
    """`POST /agents/{type}/{name}/call` (form-encoded, as Twilio sends it): TwiML connecting a stream."""
    bridge: Bridge = request.app.state.bridge
    agent_type = subjects.check_type(request.path_params["type"])
    name = request.path_params["name"]
    subjects.encode_name(name)
    params = await read_form(request)
    url = public_url(bridge.config, request.url.scheme, request.headers, request.url.path, request.url.query)
    if not signed(bridge.config, request.headers, url, params):
        raise Forbidden("X-Twilio-Signature is missing or does not match this request")
    await check_realtime(bridge, agent_type)
    warm_up()
    form = dict(params)
    parameters = {"from": form.get("From", ""), "to": form.get("To", "")}
    body = twiml(stream_url(bridge.config, request, agent_type, name), parameters)
    log.info("phone.call", agent=f"{agent_type}/{name}", call_sid=form.get("CallSid", ""))
    return Response(body, media_type=TWIML)


async def read_form(request: Request) -> list[tuple[str, str]]:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise PayloadTooLarge(f"webhook body is over {MAX_FORM_BYTES} bytes")
        chunks.append(chunk)
    return parse_qsl(b"".join(chunks).decode(errors="replace"), keep_blank_values=True)


async def check_realtime(bridge: Bridge, agent_type: str) -> None:
    """404 unless a worker serves `agent_type` and it has a realtime agent (its published request
    schema admits `{"op": "calls"}`, which `mesh.voice.VoiceAgent` answers)."""
    for found in await bridge.types():
        if found.type == agent_type:
            if found.admits_op("calls"):
                return
            raise NotFound(f"agent type {agent_type} has no realtime agent, so it cannot take calls")
    raise NotFound(f"no worker serves agent type {agent_type}")
