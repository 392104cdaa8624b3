"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from http_agents import Mailer
from playwright.async_api import Browser, async_playwright, expect

from mesh.testing import eventually
from services.demo import Counter
from services.triage import Clerk

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def test_dashboard_shows_live_state_sends_messages_and_approves(
    browser, mesh_factory, http_factory, tmp_path: Path
) -> None:
    await mesh_factory([Counter, Mailer])
    bridge = await http_factory()
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(f"{bridge.url}/")
        await expect(page.locator("#types li", has_text="counter")).to_be_visible()
        await page.fill("#open-type", "counter")
        await page.fill("#open-name", "web")
        await page.click("#open-form button")
        await expect(page.locator("#conn")).to_have_text("live")
        await expect(page.locator("#state")).to_contain_text("no state saved yet")

        # A person sends a message; the state shown changes without a reload.
        await page.fill("#message", '{"add": 2}')
        await page.click("#send")
        await expect(page.locator("#state")).to_contain_text('"value": 2')
        await expect(page.locator("#reply")).to_contain_text('"value": 2')

        # Another client changes the instance; the page follows live.
        async with httpx.AsyncClient(base_url=bridge.url) as other:
            await other.post("/agents/counter/web", json={"add": 3})
        await expect(page.locator("#state")).to_contain_text('"value": 5')
        await expect(page.locator("#timeline li")).to_have_count(3)
        await expect(page.locator("#instances li", has_text="web")).to_be_visible()
        assert await page.locator("#token-form").is_hidden()  # auth is off

        # Bad input shows an error and the page keeps working.
        await page.fill("#message", '{"add": "x"}')
        await page.click("#send")
        await expect(page.locator("#reply")).to_contain_text("schema_mismatch")

        # An agent asks for approval: it appears live (its event), with Approve and Reject buttons.
        await page.fill("#open-type", "mailer")
        await page.fill("#open-name", "desk")
        await page.click("#open-form button")
        await expect(page.locator("#title")).to_have_text("mailer/desk")
        await page.fill("#message", '"ann@example.com"')
        await page.click("#send")
        row = page.locator("#approvals li[data-id='ap1']")
        await expect(row).to_contain_text("send_email")
        await expect(row).to_contain_text("ann@example.com")
        await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        await row.get_by_role("button", name="Approve").click()
        await expect(page.locator("#approvals")).to_contain_text("none")
        await expect(page.locator("#state")).to_contain_text('"sent": [')
        await expect(page.locator("#timeline")).to_contain_text("approval_decided")
        async with httpx.AsyncClient(base_url=bridge.url) as other:
            state = (await other.get("/agents/mailer/desk/state")).json()["state"]
        assert state["sent"] == ["ann@example.com"]
        assert [d["decision"] for d in state["decisions"]] == ["approve"]

        # A reload restores the open instance from the address bar.
        await page.goto(f"{bridge.url}/#/counter/web")
        await page.reload()
        await expect(page.locator("#instances li", has_text="web")).to_be_visible()
        await expect(page.locator("#state")).to_contain_text('"value": 5')
        assert errors == []
    finally:
        await page.close()


async def test_dashboard_approves_a_real_llm_agents_tool_call(browser, mesh_factory, http_factory) -> None:
    """The approvals feature of the OpenAI agents (offline demo model): pause, approve in the page, resume."""
    await mesh_factory([Counter, Clerk])
    bridge = await http_factory()
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(f"{bridge.url}/#/clerk/desk")
        await expect(page.locator("#title")).to_have_text("clerk/desk")
        await expect(page.locator("#conn")).to_have_text("live")
        await page.fill("#message", '"add 5 to counter demo"')
        await page.click("#send")
        row = page.locator("#approvals li").first
        await expect(row).to_contain_text("add_to_counter")
        async with httpx.AsyncClient(base_url=bridge.url) as other:
            assert (await other.get("/agents/counter/demo/state")).status_code == 404  # the tool has not run
        await row.get_by_role("button", name="Approve").click()
        await expect(page.locator("#approvals")).to_contain_text("none")
        async with httpx.AsyncClient(base_url=bridge.url) as other:

            async def saved() -> httpx.Response | None:
                response = await other.get("/agents/counter/demo/state")
                return response if response.status_code == 200 else None

            response = await eventually(saved, timeout=10, interval=0.1)
            assert response.json()["state"] == {"value": 5}  # the approved tool ran, once
        assert errors == []
    finally:
        await page.close()
