"""Try a phone agent without a phone: `python -m services.phone_sim receptionist/desk` plays Twilio.

It does what Twilio does on a call: posts the voice webhook (form-encoded), follows the TwiML's
stream URL, sends `connected` and `start`, plays what it receives (echoing each `mark`), speaks (a
tone, which the model's VAD takes for speech, then silence), waits for the answer, hangs up
(`stop`), and prints the call as the instance's state keeps it. With `mesh up` and no
`OPENAI_API_KEY`, the model is the offline stub, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
import urllib.parse
import urllib.request
from typing import Any

import websockets

from services.realtime_stub import silence, tone


def _post_form(url: str, form: dict[str, str]) -> str:
    data = urllib.parse.urlencode(form).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=30) as response:
        return str(response.read().decode())


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


async def simulate(base: str, address: str, *, wait: float) -> int:
    call_sid = "CA" + os.urandom(16).hex()
    twiml = await asyncio.to_thread(_post_form, f"{base}/agents/{address}/call", {"CallSid": call_sid, "From": "+15550001234"})
    found = re.search(r'<Stream url="([^"]+)"', twiml)
    if found is None:
        print(f"no <Stream> in the webhook's answer:\n{twiml}", file=sys.stderr)
        return 1
    parameters = dict(re.findall(r'<Parameter name="([^"]+)" value="([^"]*)"/>', twiml))
    stream_sid = "MZ" + os.urandom(16).hex()
    counts: dict[str, int] = {}
    audio_came = asyncio.Event()
    print(f"calling {address}: {found.group(1)}")
    async with websockets.connect(found.group(1)) as ws:

        async def send(frame: dict[str, Any]) -> None:
            await ws.send(json.dumps(frame))

        async def listen() -> None:
            async for message in ws:
                frame = json.loads(message)
                counts[frame["event"]] = counts.get(frame["event"], 0) + 1
                if frame["event"] == "media":
                    audio_came.set()
                if frame["event"] == "mark":
                    await send({"event": "mark", "streamSid": stream_sid, "mark": frame["mark"]})

        start = {
            "streamSid": stream_sid,
            "callSid": call_sid,
            "accountSid": "AC" + "0" * 32,
            "tracks": ["inbound"],
            "customParameters": parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        await send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await send({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": start})
        listener = asyncio.get_running_loop().create_task(listen())
        # The greeting (the first call in a process loads the SDK first: seconds).
        await _wait(audio_came, wait)
        audio = tone(1.0) + silence(1.5)
        for n, offset in enumerate(range(0, len(audio), 160)):
            payload = base64.b64encode(audio[offset : offset + 160]).decode()
            await send({"event": "media", "streamSid": stream_sid, "media": {"chunk": str(n + 1), "payload": payload}})
            await asyncio.sleep(0.02)  # in real time, as a phone would
        audio_came.clear()  # the answer: after the tool ran
        await _wait(audio_came, wait)
        await asyncio.sleep(1.0)  # let it finish speaking
        await send({"event": "stop", "streamSid": stream_sid, "stop": {"callSid": call_sid}})
        await asyncio.wait({listener}, timeout=5)
        listener.cancel()
    print("frames received:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    agent_type, _, name = address.partition("/")
    state = await asyncio.to_thread(_get_json, f"{base}/agents/{agent_type}/{urllib.parse.quote(name, safe='')}/state")
    call = state["state"]["calls"].get(call_sid, {})
    for entry in call.get("transcript", []):
        print(f"  {entry['role']:>9}: {entry['text']}")
    return 0


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.phone_sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("address", nargs="?", default="receptionist/desk", help="TYPE/NAME of a voice agent")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the HTTP bridge (default %(default)s)")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for each answer")
    args = parser.parse_args()
    sys.exit(asyncio.run(simulate(args.url.rstrip("/"), args.address, wait=args.wait)))


if __name__ == "__main__":
    main()
