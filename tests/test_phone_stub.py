"""The offline realtime model speaks the OpenAI realtime protocol: the SDK's own validation accepts it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import websockets
from agents import function_tool
from agents.realtime import RealtimeAgent, RealtimeRunner
from agents.realtime.model_inputs import RealtimeModelSendRawMessage
from agents.realtime.openai_realtime import get_server_event_type_adapter

from services.realtime_stub import LABEL, RealtimeStub, silence, tone

EXPECTED = {
    "session.created",
    "session.updated",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.input_audio_transcription.completed",
    "response.created",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.done",
}


@function_tool
def look_up(question: str) -> str:
    """Look the question up."""
    return json.dumps({"output": f"the answer to {question!r} is 42"})


async def test_a_realtime_session_on_the_stub_gets_only_events_the_sdks_adapter_validates() -> None:
    adapter = get_server_event_type_adapter()
    seen: list[dict[str, Any]] = []
    errors: list[Any] = []
    transcripts: list[str] = []
    agent = RealtimeAgent(name="Tester", instructions="Answer with look_up.", tools=[look_up])
    async with RealtimeStub() as stub:
        runner = RealtimeRunner(agent, config={"tracing_disabled": True})
        settings = {
            "input_audio_format": "g711_ulaw",
            "output_audio_format": "g711_ulaw",
            "turn_detection": {"type": "server_vad", "interrupt_response": True, "create_response": True},
            "input_audio_transcription": {"model": "gpt-4o-mini-transcribe"},
        }
        session = await runner.run(model_config={"url": stub.url, "headers": {}, "initial_model_settings": settings})
        async with session:
            await session.model.send_event(RealtimeModelSendRawMessage(message={"type": "response.create"}))

            async def caller() -> None:
                audio = tone(1.0) + silence(1.0)
                for start in range(0, len(audio), 400):
                    await session.send_audio(audio[start : start + 400])

            feeding = asyncio.get_running_loop().create_task(caller())
            async with asyncio.timeout(30):
                async for event in session:
                    if event.type == "error":
                        errors.append(event.error)
                    elif event.type == "raw_model_event" and event.data.type == "raw_server_event":
                        seen.append(event.data.data)
                        if event.data.data["type"] == "response.output_audio_transcript.done":
                            transcripts.append(event.data.data["transcript"])
                            if len(transcripts) == 2:  # the greeting, then the answer with the tool's output
                                break
            await feeding
    assert errors == []
    for raw in seen:
        adapter.validate_python(raw)  # what the SDK does with every event it receives
        assert raw["event_id"]
    assert EXPECTED <= {raw["type"] for raw in seen}
    assert all(text.startswith(LABEL) for text in transcripts)
    assert "the answer to 'What is the capital of France?' is 42" in transcripts[1]


async def test_the_stub_answers_what_it_does_not_handle_with_a_valid_error_event() -> None:
    adapter = get_server_event_type_adapter()
    async with RealtimeStub() as stub, websockets.connect(stub.url) as ws:
        created = orjson.loads(await ws.recv())
        assert adapter.validate_python(created).type == "session.created"
        for message in ('{"type": "dance", "event_id": "e1"}', "not json", "[1]"):
            await ws.send(message)
            error = orjson.loads(await ws.recv())
            assert adapter.validate_python(error).type == "error"
        assert error["error"]["code"] == "invalid_event"
