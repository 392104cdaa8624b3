"""The dashboard's chat with LLM agents, in a real headless Chromium against a real bridge and worker:
streaming answers, reloads in the middle of one, approvals in the conversation, a phone-width screen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_agents import PacedTriage, no_pacer, use_pacer
from dashboard_browser import PageErrors, horizontal_overflow, open_browser, screenshot
from playwright.async_api import Browser, Page, expect

from mesh import bus
from mesh.memory import MemorySession, open_memory_stream
from mesh.testing import eventually
from services.demo import Counter

QUESTION = "What is the capital of France?"
ANSWER = "[offline demo model] History Tutor: the capital of France is Paris."
OFFLINE = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "MESH_MODEL": ""}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with open_browser() as browser:
        yield browser


@pytest.fixture(autouse=True)
def _unpaced() -> Any:
    yield
    no_pacer()


async def ask(page: Page, text: str) -> None:
    await page.get_by_role("textbox", name="Message").fill(text)
    await page.get_by_role("button", name="Send").click()


async def conversation_text(page: Page) -> str:
    return await page.get_by_role("log", name="Conversation").inner_text()


async def test_chat_streams_the_answer_as_it_is_written_and_keeps_it_after_a_reload(browser, mesh_factory, http_factory) -> None:
    pacer = use_pacer()
    await mesh_factory([PacedTriage, Counter])
    bridge = await http_factory()
    page = await browser.new_page()
    errors = PageErrors(page)
    try:
        await page.goto(f"{bridge.url}/ui/triage/ada")
        log = page.get_by_role("log", name="Conversation")
        await expect(page.get_by_role("tab", name="Chat")).to_have_attribute("aria-selected", "true")
        await expect(page.locator("#conn")).to_have_text("live")
        await ask(page, QUESTION)
        await expect(log).to_contain_text(QUESTION)

        # The model writes one word at a time, and only when the test lets it: each word shows.
        await pacer.release(1)
        await expect(log).to_contain_text("[offline")
        await expect(log).not_to_contain_text("demo model")
        await pacer.release(1)
        await expect(log).to_contain_text("[offline demo")
        await expect(log).not_to_contain_text("Paris")  # two text updates, and the run is not over
        await expect(log).to_contain_text("Handed off to History Tutor")
        await expect(page.get_by_role("status").filter(has_text="History Tutor")).to_be_visible()

        await pacer.open()
        await expect(log).to_contain_text("the capital of France is Paris.")
        await expect(log.get_by_role("article", name="History Tutor")).to_contain_text(ANSWER)
        await expect(log.locator("[aria-busy=true]")).to_have_count(0)  # nothing is streaming any more
        assert (await conversation_text(page)).count(ANSWER) == 1

        await page.reload()
        await expect(log).to_contain_text(QUESTION)
        await expect(log).to_contain_text(ANSWER)
        assert (await conversation_text(page)).count(ANSWER) == 1
        assert page.url == f"{bridge.url}/ui/triage/ada"
        assert errors.errors == []
    finally:
        await page.close()


async def test_chat_reload_during_a_streaming_answer_ends_with_the_answer_once(browser, mesh_factory, http_factory) -> None:
    pacer = use_pacer()
    await mesh_factory([PacedTriage, Counter])
    bridge = await http_factory()
    page = await browser.new_page()
    errors = PageErrors(page)
    try:
        await page.goto(f"{bridge.url}/ui/triage/bea")
        log = page.get_by_role("log", name="Conversation")
        await expect(page.locator("#conn")).to_have_text("live")
        await ask(page, QUESTION)
        await pacer.release(3)
        await expect(log).to_contain_text("[offline demo model]")

        await page.reload()  # mid-answer: memory has the question, the live feed replays the words so far
        await expect(log).to_contain_text(QUESTION)
        await expect(log).to_contain_text("[offline demo model]")
        await expect(log).not_to_contain_text("History Tutor:")
        await pacer.release(2)
        await expect(log).to_contain_text("[offline demo model] History Tutor:")
        await pacer.open()
        await expect(log).to_contain_text(ANSWER)
        await expect(log.locator("[aria-busy=true]")).to_have_count(0)
        text = await conversation_text(page)
        assert text.count("[offline demo model]") == 1, text
        assert text.count(QUESTION) == 1, text

        await page.reload()
        await expect(log).to_contain_text(ANSWER)
        assert (await conversation_text(page)).count("[offline demo model]") == 1
        assert errors.errors == []
    finally:
        await page.close()


async def counter_value(http: httpx.AsyncClient, name: str) -> int:
    response = await http.get(f"/agents/counter/{name}/state")
    return 0 if response.status_code == 404 else int(response.json()["state"]["value"])


async def test_chat_approves_a_tool_call_in_the_conversation_and_clears_memory_after_confirming(
    browser, nats_server, worker_factory, http_factory, tmp_path: Path
) -> None:
    await worker_factory(nats_server.url, app="services.demo", env=OFFLINE)  # a real `mesh worker`, flight recorder on
    bridge = await http_factory()
    page = await browser.new_page(viewport={"width": 1200, "height": 860})
    errors = PageErrors(page)
    async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as http:
        assert (await http.post("/agents/counter/demo", json={"add": 10})).status_code == 200
        assert (await http.post("/agents/clerk/warm", json="hello")).status_code == 200  # the worker loads the SDK
        before = await counter_value(http, "demo")
        try:
            await page.goto(f"{bridge.url}/ui/clerk/desk")
            log = page.get_by_role("log", name="Conversation")
            await expect(page.locator("#conn")).to_have_text("live")
            await ask(page, "add 5 to counter demo")
            tool = log.get_by_role("article", name="Tool call add_to_counter")
            await expect(tool).to_contain_text('"add": 5')
            await expect(tool.get_by_role("button", name="Reject")).to_be_visible()
            assert await counter_value(http, "demo") == before  # nothing runs before a person says so
            await page.get_by_role("tab", name="Timeline").click()
            timeline = page.get_by_role("list", name="Timeline")
            await expect(timeline).to_contain_text("approval requested: add_to_counter")
            await page.get_by_role("tab", name="Chat").click()
            await page.reload()  # the pending approval is in the instance's state: it is still offered
            await expect(tool.get_by_role("button", name="Approve")).to_be_visible()
            await expect(tool).to_contain_text("waiting for approval")

            await tool.get_by_role("button", name="Approve").click()
            await expect(tool).to_contain_text(f'"value": {before + 5}')  # the tool's result, in place
            await expect(log).to_contain_text(f'Clerk: done, the counter replied {{"value":{before + 5}}}')
            await expect(tool.get_by_role("button", name="Approve")).to_have_count(0)
            assert await counter_value(http, "demo") == before + 5  # exactly once
            await screenshot(page, tmp_path, "chat.png")

            await page.get_by_role("tab", name="Timeline").click()
            assert (await http.post("/agents/clerk/desk", json={"op": "nope"})).status_code == 422
            await expect(timeline).to_contain_text("turn failed: schema_mismatch")
            await expect(timeline).to_contain_text("turn ok in")
            await expect(timeline).to_contain_text("state saved: revision")
            await expect(timeline).to_contain_text("approval approve by http")
            await expect(timeline).to_contain_text("called counter/demo: ok")
            await expect(timeline).to_contain_text("run completed: Clerk answered (offline-demo)")
            await timeline.locator("summary", has_text="run completed").click()
            await expect(timeline.locator("pre", has_text='"model": "offline-demo"')).to_be_visible()
            assert page.url.endswith("/ui/clerk/desk#timeline")
            await screenshot(page, tmp_path, "timeline.png")

            await page.get_by_role("tab", name="Chat").click()
            await page.get_by_role("button", name="Clear memory").click()
            dialog = page.get_by_role("dialog", name="Clear memory?")
            await dialog.get_by_role("button", name="Cancel").click()
            await expect(log).to_contain_text("add 5 to counter demo")  # cancelled: nothing forgotten
            await page.get_by_role("button", name="Clear memory").click()
            await dialog.get_by_role("button", name="Clear").click()
            await expect(log).not_to_contain_text("add 5 to counter demo")
            page_of = await eventually(lambda: _empty_memory(http, "clerk", "desk"))
            assert page_of["items"] == []
            await page.reload()
            await expect(page.locator("#conn")).to_have_text("live")
            await expect(log).not_to_contain_text("counter")
            assert errors.errors == []
        finally:
            await page.close()


async def _empty_memory(http: httpx.AsyncClient, agent_type: str, name: str) -> dict[str, Any] | None:
    page: dict[str, Any] = (await http.get(f"/agents/{agent_type}/{name}/messages")).json()
    return page if not page["items"] else None


async def test_dashboard_fits_a_phone_and_works_from_the_keyboard(browser, mesh_factory, http_factory, tmp_path: Path) -> None:
    await mesh_factory([PacedTriage, Counter])
    bridge = await http_factory()
    page = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    errors = PageErrors(page)
    try:
        await page.goto(f"{bridge.url}/ui/triage/kim")
        await expect(page.locator("#conn")).to_have_text("live")
        assert await horizontal_overflow(page) == 0
        message = page.get_by_role("textbox", name="Message")
        await message.focus()
        await page.keyboard.type(QUESTION)
        await page.keyboard.press("Enter")  # Enter sends
        log = page.get_by_role("log", name="Conversation")
        await expect(log).to_contain_text(ANSWER)
        await expect(message).to_have_value("")
        assert await horizontal_overflow(page) == 0
        await screenshot(page, tmp_path, "chat-phone.png")

        # Tabs by keyboard: arrow keys move between the views.
        await page.get_by_role("tab", name="Chat").focus()
        await page.keyboard.press("ArrowRight")
        await expect(page.get_by_role("tab", name="State")).to_have_attribute("aria-selected", "true")
        await expect(page.get_by_role("tabpanel")).to_contain_text("revision")
        await page.keyboard.press("ArrowRight")
        await expect(page.get_by_role("tab", name="Timeline")).to_be_focused()
        await expect(page.get_by_role("list", name="Timeline")).to_contain_text("run completed")
        assert await horizontal_overflow(page) == 0
        await screenshot(page, tmp_path, "timeline-phone.png")

        # The agent list is one tap away on a phone, and leads to other instances.
        await page.get_by_role("button", name="Agents").click()
        await page.get_by_role("navigation", name="Agents").get_by_role("link", name="counter").click()
        await expect(page).to_have_url(f"{bridge.url}/ui/counter")
        assert await horizontal_overflow(page) == 0
        await page.get_by_label("Name").fill("a-rather-long-instance-name-that-could-push-the-page-sideways@example.com")
        await page.get_by_label("Name").press("Enter")
        await page.get_by_role("spinbutton", name="add").fill("3")
        await page.get_by_role("spinbutton", name="add").press("Enter")  # Enter submits the request form too
        await expect(page.get_by_role("region", name="Reply")).to_contain_text('"value": 3')
        assert await horizontal_overflow(page) == 0
        await page.get_by_role("tab", name="State").click()
        await expect(page.get_by_role("tabpanel", name="State")).to_contain_text("value: 3")
        assert await horizontal_overflow(page) == 0
        assert errors.errors == []
    finally:
        await page.close()


async def test_a_long_conversation_loads_its_latest_page_and_earlier_ones_on_request(
    browser, nats_server, mesh_factory, http_factory
) -> None:
    await mesh_factory([PacedTriage])
    bridge = await http_factory()
    nc = await bus.connect(bus.NatsOptions.from_url(nats_server.url))
    try:
        await open_memory_stream(nc.jetstream())
        items: list[dict[str, Any]] = []
        for n in range(1, 61):  # 120 items: more than the page of 100 the view loads first
            items.append({"role": "user", "content": f"question {n}"})
            items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": f"answer {n}"}]})
        await MemorySession(nc, "triage", "long").add_items(items)
    finally:
        await nc.close()
    page = await browser.new_page()
    errors = PageErrors(page)
    try:
        await page.goto(f"{bridge.url}/ui/triage/long")
        log = page.get_by_role("log", name="Conversation")
        await expect(log).to_contain_text("answer 60")
        assert await log.get_by_role("article", name="You").count() == 50  # the newest 100 items
        await expect(log.get_by_role("article", name="You").first).to_contain_text("question 11")
        await page.get_by_role("button", name="Load earlier messages").click()
        await expect(log.get_by_role("article", name="You")).to_have_count(60)
        await expect(log.get_by_role("article", name="You").first).to_contain_text("question 1")
        await expect(page.get_by_role("button", name="Load earlier messages")).to_be_hidden()
        assert errors.errors == []
    finally:
        await page.close()
