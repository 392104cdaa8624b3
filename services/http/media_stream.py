"""Phone calls on the bridge: Twilio's media stream, bridged to a realtime model session.

`WebSocket /agents/{type}/{name}/media-stream` speaks Twilio Media Streams (JSON text frames):
`connected`, `start`, `media` (base64 mu-law, 20 ms), `mark`, `dtmf`, `stop` in; `media`, `mark`,
`clear` out. The Python SDK has no Twilio transport, so this is the bridge of frames, in the
spirit of the SDK's `examples/realtime/twilio`:

- On `start` the call becomes a connection of the instance (kind `media-stream`,
  `mesh.connections`); `on_connect` (`mesh.voice.VoiceAgent`) records the call and replies the
  session's spec. The bridge builds a `RealtimeAgent` from it, whose tools are stand-ins that run
  the real tool on the instance, as a turn, and starts a `RealtimeSession` (g711 mu-law both ways,
  server VAD, input transcription) against the realtime model: OpenAI with `OPENAI_API_KEY`,
  `MESH_REALTIME_URL` if set, else the offline stub (`services.realtime_stub`) in this process.
- Caller audio goes to the session in 50 ms chunks. The model's audio goes to Twilio in 50 ms
  `media` frames, each followed by a `mark`; Twilio echoes a mark once that audio has played, which
  feeds the session's playback tracker. When the caller speaks over the agent (barge-in), the
  session interrupts the audio and the bridge drops what it had not yet sent and sends `clear`.
- Transcripts (text only, never audio), tool calls and approval requests go to the instance as
  `message` turns of the connection, one at a time in order; the instance's decision on an
  approval comes back as a frame on the connection. `stop` (or the socket closing) ends the call:
  the session closes, pending turns finish, and `close` runs `on_close`.

Bad input closes the stream with a clear code: 1003 a binary frame, 1007 a frame that is not
JSON, 1009 a frame over 64 KiB, 4400 an unknown event, a malformed one or media before `start`,
4415 a media format other than audio/x-mulaw 8000 Hz mono, and 4000 + status when the instance
refuses the call (4404: the type has no realtime agent).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from mesh.connections import FRAME_TEXT, MEDIA_STREAM, MESSAGE
from mesh.errors import MeshError, Unavailable
from mesh.voice import import_sdk
from services.http.connect import Closing, Link, close_code, close_socket, connect_info, hub_of, instance_addressed, serve_link
from services.http.errors import Forbidden
from services.http.problems import problem
from services.http.twilio import public_url, signed
from services.realtime_stub import RealtimeStub

if TYPE_CHECKING:
    from agents.realtime import RealtimeAgent, RealtimeSession, RealtimeSessionEvent

    from services.http.config import BridgeConfig

log = structlog.get_logger("services.http.media_stream")

MAX_FRAME = 64 * 1024
CHUNK = 400  # 50 ms of 8 kHz mu-law
EVENTS = frozenset({"connected", "start", "media", "mark", "dtmf", "stop"})


class BadFrame(Exception):
    """A Twilio frame the bridge cannot take: the stream is closed with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_frame(message: Mapping[str, Any]) -> dict[str, Any]:
    """One Twilio frame from an ASGI message, checked (`BadFrame` otherwise)."""
    text = message.get("text")
    if text is None:
        raise BadFrame(1003, "Twilio frames are JSON text")
    if len(text) > MAX_FRAME:
        raise BadFrame(1009, f"frame over {MAX_FRAME} bytes")
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadFrame(1007, "frame is not JSON") from exc
    if not isinstance(frame, dict) or not isinstance(frame.get("event"), str):
        raise BadFrame(4400, "frame has no event")
    if frame["event"] not in EVENTS:
        raise BadFrame(4400, f"unknown event {frame['event'][:40]!r}")
    return frame


def parse_start(frame: dict[str, Any]) -> dict[str, Any]:
    start = frame.get("start")
    if not isinstance(start, dict) or not isinstance(start.get("streamSid"), str) or not isinstance(start.get("callSid"), str):
        raise BadFrame(4400, "start needs streamSid and callSid")
    media = start.get("mediaFormat") or {}
    if (media.get("encoding"), media.get("sampleRate"), media.get("channels")) != ("audio/x-mulaw", 8000, 1):
        raise BadFrame(4415, "media format must be audio/x-mulaw, 8000 Hz, mono")
    params = start.get("customParameters") or {}
    if not isinstance(params, dict):
        raise BadFrame(4400, "customParameters must be an object")
    return start


@dataclass
class Playback:
    """The model's audio on its way to the caller, and the marks that say what has been played."""

    buffer: bytearray = field(default_factory=bytearray)
    marks: list[str] = field(default_factory=list)  # marks of the audio in `buffer`
    sent: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # mark -> (item, content index, bytes)
    counter: int = 0


class PhoneCall:
    """One media stream: Twilio on one side, the realtime session on the other, the instance behind."""

    def __init__(self, ws: WebSocket, link: Link, config: BridgeConfig) -> None:
        self.ws = ws
        self.link = link
        self.config = config
        self.stream_sid = ""
        self.call_sid = ""
        self.session: RealtimeSession | None = None
        self.tracker: Any = None
        self.inbound = bytearray()
        self.playback = Playback()
        self.turns: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[bytes] | None] | None] = asyncio.Queue()
        self.tasks: set[asyncio.Task[Any]] = set()
        link.control = self.on_control

    # -- the instance ------------------------------------------------------------------------

    def post(self, event: dict[str, Any]) -> None:
        """Queue a turn whose reply nobody waits for (a transcript, an approval request)."""
        self.turns.put_nowait((event, None))

    async def ask(self, event: dict[str, Any]) -> Any:
        """Queue a turn and wait for its reply (a tool call)."""
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.turns.put_nowait((event, future))
        return orjson.loads(await future)

    async def send_turns(self) -> None:
        """Send the queued turns one at a time, in order, until the `None` that ends the call."""
        while (item := await self.turns.get()) is not None:
            event, future = item
            try:
                reply = await self.link.event(MESSAGE, orjson.dumps(event), FRAME_TEXT)
            except MeshError as err:
                log.warning("call.turn_failed", call_sid=self.call_sid, event=event.get("type"), code=err.code)
                if future is not None and not future.done():
                    future.set_exception(err)
                continue
            if future is not None and not future.done():
                future.set_result(reply)

    def on_control(self, frame: str, payload: bytes) -> None:
        """A frame the instance sent on the call's connection: an approval decision."""
        try:
            decision = orjson.loads(payload)
            op, call_id = decision["op"], str(decision["call_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("call.control_ignored", call_sid=self.call_sid)
            return
        session = self.session
        if session is None:
            return
        if op == "approve":
            self.spawn(session.approve_tool_call(call_id))
        elif op == "reject":
            reason = decision.get("reason") or "a person rejected this tool call"
            self.spawn(session.reject_tool_call(call_id, rejection_message=str(reason)))

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- Twilio -> model ---------------------------------------------------------------------

    async def read_twilio(self) -> None:
        """Caller audio and marks to the session, until `stop` or the socket closes."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.link.client_close = Closing(int(message.get("code", 1005)), str(message.get("reason") or ""))
                return
            if self.link.closing is not None:
                continue
            try:
                frame = parse_frame(message)
                event = frame["event"]
                if event == "media":
                    await self.on_media(frame)
                elif event == "mark":
                    self.on_mark(frame)
                elif event == "stop":
                    self.link.close(1000, "call ended")
                elif event == "start":
                    raise BadFrame(4400, "a second start")
            except BadFrame as bad:
                log.info("call.bad_frame", call_sid=self.call_sid, code=bad.code, reason=bad.reason)
                self.link.close(bad.code, bad.reason)

    async def on_media(self, frame: dict[str, Any]) -> None:
        media = frame.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise BadFrame(4400, "media needs a payload")
        try:
            self.inbound.extend(base64.b64decode(media["payload"], validate=True))
        except binascii.Error as exc:
            raise BadFrame(4400, "media payload is not base64") from exc
        if len(self.inbound) >= CHUNK and self.session is not None:
            chunk, self.inbound = bytes(self.inbound), bytearray()
            await self.session.send_audio(chunk)

    def on_mark(self, frame: dict[str, Any]) -> None:
        name = str((frame.get("mark") or {}).get("name", ""))
        played = self.playback.sent.pop(name, None)
        if played is not None and self.tracker is not None:
            item_id, content_index, count = played
            self.tracker.on_play_bytes(item_id, content_index, b"\x00" * count)

    # -- model -> Twilio and the instance --------------------------------------------------------

    async def read_session(self) -> None:
        assert self.session is not None
        try:
            async for event in self.session:
                await self.on_session_event(event)
        except Exception as exc:
            log.warning("call.model_failed", call_sid=self.call_sid, error=repr(exc)[:300])
        if self.link.closing is None:  # the model went away mid-call: hang up rather than leave silence
            log.warning("call.model_ended", call_sid=self.call_sid)
            self.link.close(1011, "the realtime model ended the session")

    async def on_session_event(self, event: RealtimeSessionEvent) -> None:
        if event.type == "audio":
            self.playback.buffer.extend(event.audio.data)
            self.playback.counter += 1
            mark = f"m{self.playback.counter}"
            self.playback.sent[mark] = (event.audio.item_id, event.audio.content_index, len(event.audio.data))
            self.playback.marks.append(mark)
            if len(self.playback.buffer) >= CHUNK:
                self.flush_audio()
        elif event.type == "audio_end":
            self.flush_audio()
        elif event.type == "audio_interrupted":
            # Barge-in: what Twilio has not played yet must not be played.
            self.link.discard_queued()
            self.playback.buffer.clear()
            self.playback.marks.clear()
            self.playback.sent.clear()  # Twilio hands back the marks of cleared audio: not played
            self.twilio({"event": "clear", "streamSid": self.stream_sid})
        elif event.type == "tool_approval_required":
            self.post({"type": "approval", "call_id": event.call_id, "name": event.tool.name, "arguments": event.arguments})
        elif event.type == "raw_model_event" and event.data.type == "raw_server_event":
            self.on_server_event(event.data.data)
        elif event.type == "error":
            log.warning("call.model_error", call_sid=self.call_sid, error=str(event.error)[:300])

    def on_server_event(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "conversation.item.input_audio_transcription.completed":
            self.post({"type": "transcript", "role": "user", "text": str(data.get("transcript") or "")})
        elif kind == "response.output_audio_transcript.done":
            self.post({"type": "transcript", "role": "assistant", "text": str(data.get("transcript") or "")})
        elif kind == "response.output_text.done":
            self.post({"type": "transcript", "role": "assistant", "text": str(data.get("text") or "")})

    def flush_audio(self) -> None:
        if not self.playback.buffer:
            return
        payload = base64.b64encode(bytes(self.playback.buffer)).decode()
        self.playback.buffer.clear()
        self.twilio({"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}})
        for mark in self.playback.marks:
            self.twilio({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": mark}})
        self.playback.marks.clear()

    def twilio(self, frame: dict[str, Any]) -> None:
        self.link.write(FRAME_TEXT, orjson.dumps(frame))

    # -- the call ----------------------------------------------------------------------------

    async def wait_start(self) -> dict[str, Any] | None:
        """Frames until `start`: its content, or None if the stream ended or was closed for bad input."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return None
            try:
                frame = parse_frame(message)
                if frame["event"] == "start":
                    return parse_start(frame)
                if frame["event"] == "stop":
                    await close_socket(self.ws, 1000, "stopped before start")
                    return None
                if frame["event"] != "connected":
                    raise BadFrame(4400, f"{frame['event']} before start")
            except BadFrame as bad:
                log.info("call.bad_frame", code=bad.code, reason=bad.reason)
                await close_socket(self.ws, bad.code, bad.reason)
                return None

    async def run(self, spec: dict[str, Any], model: ModelEndpoint) -> None:
        await import_sdk()
        from agents.realtime import RealtimePlaybackTracker, RealtimeRunner
        from agents.realtime.model_inputs import RealtimeModelSendRawMessage

        self.tracker = RealtimePlaybackTracker()
        runner = RealtimeRunner(self.build_agent(spec), config={"tracing_disabled": True, "async_tool_calls": True})
        settings: dict[str, Any] = {
            "input_audio_format": "g711_ulaw",
            "output_audio_format": "g711_ulaw",
            "turn_detection": {"type": "server_vad", "interrupt_response": True, "create_response": True},
            "input_audio_transcription": {"model": "gpt-4o-mini-transcribe"},
        }
        if spec.get("voice"):
            settings["voice"] = spec["voice"]
        if model.model_name:
            settings["model_name"] = model.model_name
        options: dict[str, Any] = {"initial_model_settings": settings, "playback_tracker": self.tracker}
        if model.url:
            options["url"] = model.url
        if model.headers is not None:
            options["headers"] = model.headers
        if model.api_key:
            options["api_key"] = model.api_key
        session = await runner.run(model_config=options)  # type: ignore[arg-type]
        turns = asyncio.get_running_loop().create_task(self.send_turns())
        try:
            async with session:
                self.session = session
                if spec.get("greeting"):
                    await session.model.send_event(RealtimeModelSendRawMessage(message={"type": "response.create"}))
                events = asyncio.get_running_loop().create_task(self.read_session())
                try:
                    await serve_link(self.link, self.read_twilio)
                finally:
                    events.cancel()
                    await asyncio.gather(events, return_exceptions=True)
                    self.session = None
        finally:
            for task in list(self.tasks):
                task.cancel()
            self.turns.put_nowait(None)  # the transcript so far is written before the close
            try:
                async with asyncio.timeout(self.config.timeout):
                    await turns
            except TimeoutError:
                turns.cancel()

    def build_agent(self, spec: dict[str, Any]) -> RealtimeAgent[Any]:
        """The session's agent: the instance's, with stand-in tools that run the real ones there."""
        from agents import FunctionTool
        from agents.realtime import RealtimeAgent

        def stand_in(tool: dict[str, Any]) -> FunctionTool:
            async def invoke(ctx: Any, arguments: str) -> str:
                event = {
                    "type": "tool",
                    "call_id": getattr(ctx, "tool_call_id", ""),
                    "name": tool["name"],
                    "arguments": arguments,
                }
                try:
                    reply = await self.ask(event)
                except MeshError as err:
                    return orjson.dumps({"error": err.to_wire()}).decode()
                return str(reply.get("output", "")) if isinstance(reply, dict) else str(reply)

            return FunctionTool(
                name=str(tool["name"]),
                description=str(tool.get("description") or ""),
                params_json_schema=tool.get("parameters") or {"type": "object", "properties": {}},
                on_invoke_tool=invoke,
                strict_json_schema=False,
                needs_approval=bool(tool.get("needs_approval")),
            )

        return RealtimeAgent(
            name=str(spec.get("agent") or "agent"),
            instructions=str(spec.get("instructions") or ""),
            tools=[stand_in(t) for t in spec.get("tools") or []],
        )


@dataclass(frozen=True)
class ModelEndpoint:
    """Where the realtime session connects: OpenAI, `MESH_REALTIME_URL`, or the offline stub."""

    url: str | None = None
    headers: dict[str, str] | None = None
    api_key: str | None = None
    model_name: str | None = None


async def model_endpoint(app: ASGIApp, config: BridgeConfig) -> ModelEndpoint:
    key = config.openai_api_key
    if config.realtime_url:
        return ModelEndpoint(url=config.realtime_url, headers={"Authorization": f"Bearer {key}"} if key else {})
    if key:
        return ModelEndpoint(api_key=key, model_name=config.realtime_model)
    return ModelEndpoint(url=await offline_stub(app), headers={})


async def offline_stub(app: ASGIApp) -> str:
    """The URL of this bridge's offline realtime model, started on first use and stopped with the bridge."""
    state = app.state  # type: ignore[attr-defined]
    found: asyncio.Future[str] | None = getattr(state, "realtime_stub", None)
    if found is None:
        found = state.realtime_stub = asyncio.get_running_loop().create_future()

        async def serve(ready: asyncio.Future[str]) -> None:
            try:
                async with RealtimeStub() as stub:
                    ready.set_result(stub.url)
                    await asyncio.Event().wait()
            except OSError as exc:
                if not ready.done():
                    ready.set_exception(exc)

        state.bridge.spawn(serve(found))
    return await asyncio.shield(found)


async def media_stream(ws: WebSocket) -> None:
    """`WebSocket /agents/{type}/{name}/media-stream`: one phone call (module doc)."""
    addressed = await instance_addressed(ws)
    if addressed is None:
        return
    agent_type, name = addressed
    config: BridgeConfig = ws.app.state.bridge.config
    url = public_url(config, ws.url.scheme, ws.headers, ws.url.path, ws.url.query)
    if not signed(config, ws.headers, url):
        await ws.send_denial_response(problem(Forbidden("X-Twilio-Signature is missing or does not match"), ws.url.path))
        return
    hub = await hub_of(ws.app)
    if hub.fenced():
        await ws.send_denial_response(problem(Unavailable("this bridge is not serving connections now"), ws.url.path))
        return
    await ws.accept()
    link = hub.open(ws, agent_type, name)
    call = PhoneCall(ws, link, config)
    try:
        start = await call.wait_start()
        if start is None:
            return
        call.stream_sid, call.call_sid = start["streamSid"], start["callSid"]
        params = {str(k): str(v) for k, v in (start.get("customParameters") or {}).items()}
        info: dict[str, object] = {
            "callSid": call.call_sid,
            "streamSid": call.stream_sid,
            "accountSid": str(start.get("accountSid") or ""),
            "from": params.get("from", ""),
            "customParameters": params,
        }
        try:
            spec = orjson.loads(await link.connect(connect_info(ws, MEDIA_STREAM, info)))
        except MeshError as err:
            await close_socket(ws, close_code(err), err.code)
            return
        log.info("call.started", call_sid=call.call_sid, agent=f"{agent_type}/{name}", link=link.id)
        await call.run(spec, await model_endpoint(ws.app, config))
    finally:
        hub.forget(link)
        await link.send_close_event()
        log.info("call.ended", call_sid=call.call_sid, agent=f"{agent_type}/{name}")
