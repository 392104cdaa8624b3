"""A fake Twilio for the phone tests: the webhook as Twilio posts it, and a Media Streams client."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import websockets

from mesh.testing import eventually
from services.realtime_stub import silence, tone

FIRST_AUDIO = 90.0
"""Seconds the first audio may take: the first call in a process imports the SDK (seconds on a busy machine)."""


def start_frame(stream_sid: str, call_sid: str, parameters: dict[str, str]) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": stream_sid,
        "start": {
            "streamSid": stream_sid,
            "accountSid": "AC00000000000000000000000000000000",
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }


async def place_call(http_url: str, address: str, call_sid: str, caller: str = "+15550001111") -> tuple[str, dict[str, str]]:
    """POST the voice webhook as Twilio does; the TwiML's stream URL and its parameters."""
    async with httpx.AsyncClient(base_url=http_url) as http:
        response = await http.post(f"/agents/{address}/call", data={"CallSid": call_sid, "From": caller, "To": "+15559990000"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    twiml = response.text
    url = re.search(r'<Stream url="([^"]+)"', twiml)
    assert url is not None, twiml
    parameters = dict(re.findall(r'<Parameter name="([^"]+)" value="([^"]*)"/>', twiml))
    return url.group(1), parameters


class FakeTwilio:
    """What Twilio does on a media stream: sends audio, plays what it gets (echoing each mark)."""

    def __init__(self, ws: websockets.ClientConnection, stream_sid: str, call_sid: str) -> None:
        self.ws = ws
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.received: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None
        """The code the bridge closed the stream with, once it did."""

    async def start(self, parameters: dict[str, str]) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send(start_frame(self.stream_sid, self.call_sid, parameters))
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def speak(self, seconds: float = 1.0, then_silence: float = 1.5) -> None:
        """A tone (speech, to the model's VAD), then silence, as 20 ms media frames."""
        audio = tone(seconds) + silence(then_silence)
        for n, start in enumerate(range(0, len(audio), 160)):
            payload = base64.b64encode(audio[start : start + 160]).decode()
            media = {"track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20), "payload": payload}
            await self.send({"event": "media", "sequenceNumber": str(n + 2), "streamSid": self.stream_sid, "media": media})

    async def stop(self) -> None:
        await self.send({"event": "stop", "streamSid": self.stream_sid, "stop": {"callSid": self.call_sid}})

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                frame = orjson.loads(message)
                self.received.append(frame)
                if frame.get("event") == "mark":  # played at once: say so, as Twilio does
                    await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": frame["mark"]})
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self._changed.set()

    def events(self) -> list[str]:
        return [f.get("event", "?") for f in self.received]

    async def wait_for(self, probe: Callable[[FakeTwilio], bool], timeout: float = 30.0) -> None:
        await eventually(lambda: probe(self) or None, timeout=timeout, interval=0.05)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
