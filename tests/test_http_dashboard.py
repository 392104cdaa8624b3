"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright): deep links,
request forms generated from the schemas the workers publish, methods, live state, the timeline,
approvals of agents that are not LLM agents, and bearer auth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from dashboard_browser import PageErrors, open_browser
from http_agents import Mailer, Notes
from playwright.async_api import Browser, expect
from pydantic import BaseModel

from mesh import Agent
from services.demo import Counter, Echo


class CallState(BaseModel):
    calls: dict[str, dict[str, Any]] = {}


class Line(BaseModel):
    call: str
    role: str
    text: str


class Phone(Agent[CallState]):
    """Keeps phone calls' transcripts in its state the way calls do: `calls[<call id>].transcript`."""

    type = "phone"

    async def on_request(self, request: Line) -> int:
        call = self.state.calls.setdefault(request.call, {"status": "in-progress", "transcript": []})
        call["transcript"].append({"role": request.role, "text": request.text})
        return len(call["transcript"])


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with open_browser() as browser:
        yield browser


async def test_deep_links_open_an_instance_and_its_request_form_follows_the_schema(browser, mesh_factory, http_factory) -> None:
    await mesh_factory([Counter, Echo, Notes])
    bridge = await http_factory()
    page = await browser.new_page()
    errors = PageErrors(page)
    try:
        await page.goto(f"{bridge.url}/")
        agents = page.get_by_role("navigation", name="Agents")
        await agents.get_by_role("link", name="counter").click()
        await expect(page).to_have_url(f"{bridge.url}/ui/counter")
        await page.get_by_label("Name").fill("web")
        await page.get_by_role("button", name="Open").click()
        await expect(page).to_have_url(f"{bridge.url}/ui/counter/web")
        await expect(page.get_by_role("heading", name="counter/web")).to_be_visible()
        await expect(page.locator("#conn")).to_have_text("live")
        await expect(page.get_by_role("tab", name="Request")).to_have_attribute("aria-selected", "true")
        await expect(page.get_by_role("tab", name="Chat")).to_be_hidden()  # not an LLM agent

        # The request form comes from the type's schema: {"add": integer}, with its description.
        add = page.get_by_role("spinbutton", name="add")
        await expect(add).to_have_accessible_description("Amount to add (may be negative).")
        await add.fill("2")
        await page.get_by_role("button", name="Send").click()
        reply = page.get_by_role("region", name="Reply")
        await expect(reply).to_contain_text('"value": 2')

        # Methods get their own forms.
        methods = page.get_by_role("form", name="Method reset")
        await methods.get_by_role("button", name="Call reset").click()
        await expect(methods).to_contain_text('"value": 0')

        # Raw JSON is one toggle away; bad input gets the agent's error and the page keeps working.
        await add.fill("4")
        await page.get_by_label("Raw JSON").first.check()
        raw = page.get_by_role("textbox", name="Request as JSON")
        await expect(raw).to_have_value('{\n  "add": 4\n}')
        await raw.fill('{"add": "x"}')
        await page.get_by_role("button", name="Send").click()
        await expect(reply).to_contain_text("schema_mismatch")
        await raw.fill('{"add": 4}')
        await page.get_by_role("button", name="Send").click()
        await expect(reply).to_contain_text('"value": 4')

        # State is a tree with its revision, and follows other clients live.
        await page.get_by_role("tab", name="State").click()
        await expect(page).to_have_url(f"{bridge.url}/ui/counter/web#state")
        state = page.get_by_role("tabpanel", name="State")
        await expect(state).to_contain_text("value: 4")
        async with httpx.AsyncClient(base_url=bridge.url) as other:
            await other.post("/agents/counter/web", json={"add": 3})
        await expect(state).to_contain_text("value: 7")
        await expect(state).to_contain_text("revision 4")
        await expect(agents.get_by_role("link", name="web")).to_have_attribute("aria-current", "")

        # Events show as readable lines with their raw JSON one click away.
        await page.goto(f"{bridge.url}/ui/notes/pad#timeline")
        await expect(page.locator("#conn")).to_have_text("live")
        async with httpx.AsyncClient(base_url=bridge.url) as other:
            await other.post("/agents/notes/pad", json="buy milk")
        timeline = page.get_by_role("list", name="Timeline")
        await expect(timeline).to_contain_text('noted: {"note":"buy milk","count":1}')
        await timeline.get_by_text("noted:").click()
        await expect(timeline.locator("pre")).to_contain_text('"note": "buy milk"')

        # A type whose schema says nothing (echo) starts on raw JSON.
        await page.goto(f"{bridge.url}/ui/echo/e")
        await expect(page.get_by_label("Raw JSON").first).to_be_checked()
        await page.get_by_role("textbox", name="Request as JSON").fill('{"hello": ["world"]}')
        await page.get_by_role("button", name="Send").click()
        await expect(page.get_by_role("region", name="Reply")).to_contain_text('"world"')

        # The old links (#/type/name) land on the new ones; back returns to the previous instance.
        await page.goto(f"{bridge.url}/#/counter/web")
        await expect(page).to_have_url(f"{bridge.url}/ui/counter/web")
        await expect(page.get_by_role("heading", name="counter/web")).to_be_visible()
        await agents.get_by_role("link", name="counter").click()
        await page.get_by_label("Name").fill("other")
        await page.get_by_role("button", name="Open").click()
        await expect(page.get_by_role("heading", name="counter/other")).to_be_visible()
        await page.go_back()
        await expect(page).to_have_url(f"{bridge.url}/ui/counter")
        await page.go_back()
        await expect(page.get_by_role("heading", name="counter/web")).to_be_visible()
        assert errors.errors == []
    finally:
        await page.close()


async def test_approvals_of_an_agent_without_a_chat_are_listed_with_their_buttons(browser, mesh_factory, http_factory) -> None:
    await mesh_factory([Mailer])
    bridge = await http_factory()
    page = await browser.new_page()
    errors = PageErrors(page)
    try:
        await page.goto(f"{bridge.url}/ui/mailer/desk")
        await expect(page.locator("#conn")).to_have_text("live")
        # Its schema is a choice (an address, or an approvals control message): the form offers it.
        await expect(page.get_by_role("combobox", name="Request: kind")).to_be_visible()
        await page.get_by_label("Raw JSON").first.check()
        await page.get_by_role("textbox", name="Request as JSON").fill('"ann@example.com"')
        await page.get_by_role("button", name="Send").click()
        pending = page.get_by_role("region", name="Pending approvals")
        row = pending.get_by_role("listitem").filter(has_text="send_email")
        await expect(row).to_contain_text("ann@example.com")
        await row.get_by_role("button", name="Approve").click()
        await expect(pending).to_contain_text("none")
        async with httpx.AsyncClient(base_url=bridge.url) as other:
            state = (await other.get("/agents/mailer/desk/state")).json()["state"]
        assert state["sent"] == ["ann@example.com"]
        assert [d["decision"] for d in state["decisions"]] == ["approve"]
        assert errors.errors == []
    finally:
        await page.close()


async def test_dashboard_with_bearer_auth_asks_for_the_token_once_and_then_works_live(
    browser, mesh_factory, http_factory
) -> None:
    await mesh_factory([Counter])
    bridge = await http_factory(tokens=("s3cret",))
    page = await browser.new_page()
    try:
        await page.goto(f"{bridge.url}/ui/counter/locked")  # the page itself is public; the API is not
        sign_in = page.get_by_role("form", name="Sign in")
        await expect(sign_in).to_be_visible()
        await sign_in.get_by_label("Bearer token").fill("s3cret")
        await sign_in.get_by_role("button", name="Sign in").click()
        await expect(sign_in).to_be_hidden()
        await expect(page.locator("#conn")).to_have_text("live")  # the live view through a ticket
        await page.get_by_role("spinbutton", name="add").fill("6")
        await page.get_by_role("button", name="Send").click()
        await expect(page.get_by_role("region", name="Reply")).to_contain_text('"value": 6')
        async with httpx.AsyncClient(base_url=bridge.url, headers={"Authorization": "Bearer s3cret"}) as other:
            await other.post("/agents/counter/locked", json={"add": 1})
        await page.get_by_role("tab", name="State").click()
        await expect(page.get_by_role("tabpanel", name="State")).to_contain_text("value: 7")
        async with httpx.AsyncClient(base_url=bridge.url) as anonymous:
            assert (await anonymous.get("/agents/counter/locked/messages")).status_code == 401
            assert (await anonymous.get("/client.js")).status_code == 200
    finally:
        await page.close()


async def test_forms_read_what_a_person_fills_in_from_nested_schemas(browser, mesh_factory, http_factory) -> None:
    await mesh_factory([Counter])
    bridge = await http_factory()
    page = await browser.new_page()
    errors = PageErrors(page)
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["title", "size"],
        "properties": {
            "title": {"type": "string", "description": "What it is called."},
            "size": {"type": "integer"},
            "ratio": {"anyOf": [{"type": "number"}, {"type": "null"}]},
            "colour": {"enum": ["red", "green"]},
            "urgent": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "owner": {"$ref": "#/$defs/Owner"},
            "extra": {},
        },
        "$defs": {"Owner": {"type": "object", "properties": {"email": {"type": "string"}}}},
    }
    try:
        await page.goto(f"{bridge.url}/ui")
        await page.evaluate(
            """async (schema) => {
                const { buildForm, makeResolver } = await import("/static/forms.js");
                const form = buildForm(schema, makeResolver(schema));
                const host = document.createElement("form");
                host.setAttribute("aria-label", "Sample");
                host.append(form.element);
                document.body.prepend(host);
                window.sampleForm = form;
            }""",
            schema,
        )
        sample = page.get_by_role("form", name="Sample")
        await expect(sample.get_by_role("textbox", name="title")).to_have_accessible_description("What it is called.")
        await sample.get_by_role("textbox", name="title").fill("Report")
        await sample.get_by_role("spinbutton", name="size").fill("3")
        await sample.get_by_role("spinbutton", name="ratio").fill("0.5")
        await sample.get_by_role("combobox", name="colour").select_option(label="green")
        await sample.get_by_role("checkbox", name="urgent").check()
        await sample.get_by_role("textbox", name="tags").fill("a\nb")
        await sample.get_by_role("group", name="owner").get_by_role("textbox", name="email").fill("o@example.com")
        await sample.get_by_role("textbox", name="extra").fill('{"k": [1]}')
        value = await page.evaluate("window.sampleForm.read()")
        assert value == {
            "title": "Report",
            "size": 3,
            "ratio": 0.5,
            "colour": "green",
            "urgent": True,
            "tags": ["a", "b"],
            "owner": {"email": "o@example.com"},
            "extra": {"k": [1]},
        }
        await sample.get_by_role("textbox", name="title").fill("")
        message = await page.evaluate(
            "(() => { try { window.sampleForm.read(); return null } catch (e) { return e.message } })()"
        )
        assert message == "title is required"
        assert errors.errors == []
    finally:
        await page.close()


async def test_a_phone_calls_transcript_shows_live_whatever_view_is_open(browser, mesh_factory, http_factory) -> None:
    await mesh_factory([Phone])
    bridge = await http_factory()
    page = await browser.new_page()
    errors = PageErrors(page)
    try:
        await page.goto(f"{bridge.url}/ui/phone/desk#timeline")
        await expect(page.locator("#conn")).to_have_text("live")
        call = page.get_by_role("region", name="Call CA42")
        await expect(call).to_be_hidden()
        async with httpx.AsyncClient(base_url=bridge.url) as other:
            await other.post("/agents/phone/desk", json={"call": "CA42", "role": "caller", "text": "Hello, is anyone there?"})
            await expect(call).to_contain_text("caller: Hello, is anyone there?")
            await expect(call).to_contain_text("in-progress")
            await other.post("/agents/phone/desk", json={"call": "CA42", "role": "agent", "text": "Yes, how can I help?"})
            await expect(call.get_by_role("listitem")).to_have_text(
                ["caller: Hello, is anyone there?", "agent: Yes, how can I help?"]
            )
        assert errors.errors == []
    finally:
        await page.close()
