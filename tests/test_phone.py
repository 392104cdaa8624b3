"""Call my agent: Twilio's webhook and media stream on real bridges, the realtime session on the offline stub."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pytest
import websockets
from connection_support import PHONE_ENV
from phone_agents import Concierge, Ledger
from phone_support import FIRST_AUDIO, FakeTwilio, place_call, start_frame

from mesh.testing import eventually
from services.demo_live import Receptionist, Room
from services.triage import Triage


def _on(url: str, bridge_url: str) -> str:
    """The stream URL as another bridge's (a load balancer may send the stream to any bridge)."""
    parts, other = urlsplit(url), urlsplit(bridge_url)
    return urlunsplit((parts.scheme, other.netloc, parts.path, parts.query, ""))


async def _call_state(client, agent_type: str, name: str, call_sid: str) -> dict[str, object] | None:
    state = await client.state(agent_type, name)
    return None if state is None else state["calls"].get(call_sid)


async def test_a_call_across_two_bridges_and_two_workers_streams_barges_in_and_keeps_its_transcript(
    nats_server, worker_factory, bridge_factory, mesh_client
) -> None:
    for _ in range(2):
        await worker_factory(nats_server.url, "phone_agents", PHONE_ENV)
    one, two = await bridge_factory(), await bridge_factory()
    url, parameters = await place_call(one.url, "receptionist/desk", "CA100")
    assert url == f"ws://127.0.0.1:{one.port}/agents/receptionist/desk/media-stream"
    assert parameters["from"] == "+15550001111"
    async with websockets.connect(_on(url, two.url)) as ws:
        twilio = FakeTwilio(ws, "MZ100", "CA100")
        await twilio.start(parameters)
        try:
            # The agent greets first: audio for this stream, each chunk followed by a mark.
            await twilio.wait_for(lambda t: "mark" in t.events(), timeout=FIRST_AUDIO)
            greeting = [f for f in twilio.received if f["event"] == "media"]
            assert greeting and all(f["streamSid"] == "MZ100" for f in twilio.received)
            assert base64.b64decode(greeting[0]["media"]["payload"])  # mu-law bytes
            # The caller speaks over it: the agent's audio is cleared (barge-in), then it answers.
            await twilio.speak(seconds=1.0, then_silence=1.5)
            await twilio.wait_for(lambda t: "clear" in t.events())
            cleared = twilio.events().index("clear")
            await twilio.wait_for(lambda t: "media" in t.events()[cleared:], timeout=60)
            # The transcript is in the instance's state while the call runs (text only).
            call = await eventually(lambda: _answered(mesh_client, "CA100"), timeout=60)
            assert call["from"] == "+15550001111" and call["ended_at"] is None
            roles = [entry["role"] for entry in call["transcript"]]
            assert "user" in roles and "assistant" in roles
            texts = " ".join(entry["text"] for entry in call["transcript"])
            assert "(offline demo)" in texts
            assert "Paris" in texts  # the tutors answered, through the tool, on some worker
            await twilio.stop()
            await twilio.wait_for(lambda t: t.close_code is not None)
            assert twilio.close_code == 1000
        finally:
            await twilio.close()
    call = await eventually(lambda: _ended(mesh_client, "receptionist", "desk", "CA100"), timeout=20)
    assert call["ended_at"] >= call["started_at"]


async def _answered(client, call_sid: str) -> dict[str, object] | None:
    call = await _call_state(client, "receptionist", "desk", call_sid)
    if call is None or not any("Paris" in e["text"] for e in call["transcript"] if e["role"] == "assistant"):
        return None
    return call


async def _ended(client, agent_type: str, name: str, call_sid: str) -> dict[str, object] | None:
    call = await _call_state(client, agent_type, name, call_sid)
    return call if call is not None and call["ended_at"] else None


async def test_an_approval_gated_tool_waits_for_a_person_on_another_bridge(mesh_factory, http_factory, mesh_client) -> None:
    await mesh_factory([Concierge, Ledger])
    await mesh_factory([Concierge, Ledger])
    one, two = await http_factory(), await http_factory()
    url, parameters = await place_call(one.url, "concierge/front", "CA200")
    async with websockets.connect(_on(url, two.url)) as ws:
        twilio = FakeTwilio(ws, "MZ200", "CA200")
        await twilio.start(parameters)
        try:
            await twilio.speak()
            async with httpx.AsyncClient(base_url=one.url) as http:

                async def pending() -> list[dict[str, object]]:
                    return (await http.get("/agents/concierge/front/approvals")).json()["pending"]

                (approval,) = await eventually(pending, timeout=FIRST_AUDIO)
                assert approval["tool"] == "write_note" and "capital of France" in approval["arguments"]
                assert await mesh_client.state("ledger", "book") is None  # the tool has not run
                response = await http.post(f"/agents/concierge/front/approvals/{approval['id']}/approve")
                assert response.status_code == 200, response.text
                assert response.json()["decision"]["decision"] == "approve"
            ledger = await eventually(lambda: mesh_client.state("ledger", "book"), timeout=30)
            assert ledger["notes"] == ["What is the capital of France?"]
            # The model heard the tool's output and said so.
            await eventually(lambda: _said(mesh_client, "concierge", "front", "CA200", "Here is what I found"), timeout=30)
            await twilio.stop()
        finally:
            await twilio.close()
    call = await eventually(lambda: _ended(mesh_client, "concierge", "front", "CA200"), timeout=20)
    assert call["ended_at"]


async def _said(client, agent_type: str, name: str, call_sid: str, words: str) -> bool:
    call = await _call_state(client, agent_type, name, call_sid)
    return call is not None and any(words in e["text"] for e in call["transcript"] if e["role"] == "assistant")


def twilio_signature(token: str, url: str, params: dict[str, str]) -> str:
    """As Twilio's docs compute it: the full URL, then each POST parameter's name and value in
    name order, HMAC-SHA1 keyed by the auth token, base64."""
    data = url + "".join(f"{name}{params[name]}" for name in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


async def test_with_an_auth_token_only_correctly_signed_webhooks_and_streams_are_served(mesh_factory, http_factory) -> None:
    await mesh_factory([Receptionist, Triage])
    bridge = await http_factory(twilio_auth_token="twilio-secret", tokens=("bearer-secret",))
    url = f"{bridge.url}/agents/receptionist/desk/call"
    form = {"CallSid": "CA300", "From": "+15550003333", "To": "+15559990000", "AccountSid": "AC1"}
    async with httpx.AsyncClient() as http:
        unsigned = await http.post(url, data=form)
        assert unsigned.status_code == 403 and unsigned.json()["code"] == "forbidden"
        wrong = await http.post(url, data=form, headers={"X-Twilio-Signature": twilio_signature("not-it", url, form)})
        assert wrong.status_code == 403
        tampered = {**form, "From": "+15550004444"}
        replayed = await http.post(
            url, data=tampered, headers={"X-Twilio-Signature": twilio_signature("twilio-secret", url, form)}
        )
        assert replayed.status_code == 403
        signed = await http.post(url, data=form, headers={"X-Twilio-Signature": twilio_signature("twilio-secret", url, form)})
        assert signed.status_code == 200, signed.text  # no bearer token needed: the signature is the auth
        assert "<Connect><Stream url=" in signed.text
    stream = f"{bridge.ws_url}/agents/receptionist/desk/media-stream"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(stream):
            pass
    assert refused.value.response.status_code == 403
    headers = {"X-Twilio-Signature": twilio_signature("twilio-secret", stream, {})}
    async with websockets.connect(stream, additional_headers=headers) as ws:
        await ws.send(orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode())
        await ws.send(orjson.dumps({"event": "stop", "streamSid": "MZ300"}).decode())
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


async def test_behind_a_public_url_the_twiml_and_the_signatures_use_it(mesh_factory, http_factory) -> None:
    await mesh_factory([Receptionist, Triage])
    bridge = await http_factory(twilio_auth_token="twilio-secret", public_url="https://calls.example.com")
    public = "https://calls.example.com/agents/receptionist/desk/call"
    form = {"CallSid": "CA301", "From": "+15550003333"}
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        local = {"X-Twilio-Signature": twilio_signature("twilio-secret", f"{bridge.url}/agents/receptionist/desk/call", form)}
        refused = await http.post("/agents/receptionist/desk/call", data=form, headers=local)
        assert refused.status_code == 403  # signed for another URL than the one Twilio uses
        headers = {"X-Twilio-Signature": twilio_signature("twilio-secret", public, form)}
        response = await http.post("/agents/receptionist/desk/call", data=form, headers=headers)
    assert response.status_code == 200, response.text
    assert 'url="wss://calls.example.com/agents/receptionist/desk/media-stream"' in response.text


async def test_bad_twilio_input_gets_clear_close_codes_and_errors_and_the_bridge_keeps_serving(
    mesh_factory, http_factory
) -> None:
    await mesh_factory([Receptionist, Triage, Room])
    bridge = await http_factory()
    stream = f"{bridge.ws_url}/agents/receptionist/desk/media-stream"
    connected = orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode()
    media = {"event": "media", "streamSid": "MZ1", "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}}
    bad_format = start_frame("MZ1", "CA1", {})
    bad_format["start"]["mediaFormat"] = {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}
    cases: list[tuple[str, list[str | bytes], int]] = [
        ("not JSON", ["{not json"], 1007),
        ("binary frame", [b"\x00\x01"], 1003),
        ("unknown event", [connected, orjson.dumps({"event": "dance"}).decode()], 4400),
        ("no event", [orjson.dumps({"hello": 1}).decode()], 4400),
        ("media before start", [connected, orjson.dumps(media).decode()], 4400),
        ("oversize frame", [orjson.dumps({"event": "media", "pad": "x" * 70000}).decode()], 1009),
        ("wrong media format", [connected, orjson.dumps(bad_format).decode()], 4415),
    ]
    for what, frames, code in cases:
        async with websockets.connect(stream, max_size=None) as ws:
            for frame in frames:
                await ws.send(frame)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(10):
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == code, what
    # A stream to an agent type without a realtime agent: the instance refuses the call.
    async with websockets.connect(f"{bridge.ws_url}/agents/room/lobby/media-stream") as ws:
        await ws.send(connected)
        await ws.send(orjson.dumps(start_frame("MZ2", "CA2", {})).decode())
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(30):
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
    async with httpx.AsyncClient(base_url=bridge.url) as http:
        for address, detail in (("room/lobby", "has no realtime agent"), ("nobody/x", "no worker serves")):
            response = await http.post(f"/agents/{address}/call", data={"CallSid": "CA3"})
            assert response.status_code == 404 and detail in response.json()["detail"]
        assert (await http.post("/agents/Bad/x/call", data={})).status_code == 400
    # The bridge keeps serving: a good call starts and the agent speaks.
    url, parameters = await place_call(bridge.url, "receptionist/desk", "CA4")
    async with websockets.connect(url) as ws:
        twilio = FakeTwilio(ws, "MZ4", "CA4")
        await twilio.start(parameters)
        try:
            await twilio.wait_for(lambda t: "media" in t.events(), timeout=FIRST_AUDIO)
            await twilio.stop()
        finally:
            await twilio.close()
