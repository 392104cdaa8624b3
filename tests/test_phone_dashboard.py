"""The dashboard shows a running call's transcript live (headless Chromium, a fake Twilio, the offline model)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import websockets
from dashboard_browser import PageErrors, open_browser
from phone_support import FIRST_AUDIO, FakeTwilio, place_call
from playwright.async_api import Browser, expect

from services.demo_live import Receptionist
from services.triage import Triage


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with open_browser() as browser:
        yield browser


async def test_the_dashboard_shows_the_transcript_of_a_running_call_as_it_grows(browser, mesh_factory, http_factory) -> None:
    await mesh_factory([Receptionist, Triage])
    bridge = await http_factory()
    page = await browser.new_page()
    errors = PageErrors(page)
    try:
        await page.goto(f"{bridge.url}/ui/receptionist/desk")
        call = page.get_by_role("region", name="Call CA500")
        await expect(call).to_be_hidden()
        url, parameters = await place_call(bridge.url, "receptionist/desk", "CA500")
        async with websockets.connect(url) as ws:
            twilio = FakeTwilio(ws, "MZ500", "CA500")
            await twilio.start(parameters)
            try:
                # The greeting appears while the call runs (the stream is still open).
                await expect(call).to_contain_text("Hello, you have reached", timeout=FIRST_AUDIO * 1000)
                await twilio.speak()
                await expect(call).to_contain_text("What is the capital of France?", timeout=30_000)
                await expect(call).to_contain_text("the capital of France is Paris", timeout=60_000)
                assert twilio.close_code is None  # all of it shown before the call ended
                await twilio.stop()
                await twilio.wait_for(lambda t: t.close_code is not None)
            finally:
                await twilio.close()
        assert errors.errors == []
    finally:
        await page.close()
