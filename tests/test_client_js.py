"""`/client.js`, the browser client, in a real headless Chromium: its example page against a real
`mesh worker`, and its API (live state, calls, methods, errors, chat deltas, auth) from a page."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from dashboard_agents import PacedTriage, no_pacer
from dashboard_browser import PageErrors, open_browser
from playwright.async_api import Browser, expect

from mesh.testing import eventually
from services.demo import Counter
from services.demo_live import Room

EXAMPLE = Path(__file__).parents[1] / "services" / "http" / "static" / "example.html"
OFFLINE = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "", "MESH_MODEL": ""}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with open_browser() as browser:
        yield browser


@pytest.fixture(autouse=True)
def _unpaced() -> Any:
    no_pacer()  # paced models write word by word, at once


def test_the_example_is_twenty_lines_of_script() -> None:
    script = re.search(r'<script type="module">\n(.*?)</script>', EXAMPLE.read_text(), re.S)
    assert script is not None
    assert len(script.group(1).splitlines()) <= 20


async def test_example_page_chats_with_triage_and_shows_a_counter_changed_by_another_client(
    browser, nats_server, worker_factory, http_factory
) -> None:
    await worker_factory(nats_server.url, app="services.demo", env=OFFLINE)
    bridge = await http_factory()
    async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as other:
        assert (await other.post("/agents/triage/warm-up", json="hello")).status_code == 200  # the worker loads the SDK
        page = await browser.new_page()
        errors = PageErrors(page)
        try:
            await page.goto(f"{bridge.url}/static/example.html")
            await page.get_by_role("button", name="Send").click()
            await expect(page.locator("#answer")).to_have_text(
                "[offline demo model] History Tutor: the capital of France is Paris.", timeout=20_000
            )
            counter = page.get_by_role("status")  # <output>
            await expect(counter).to_have_text("not saved yet")
            await other.post("/agents/counter/demo", json={"add": 7})
            await expect(counter).to_have_text("7")
            await other.post("/agents/counter/demo", json={"add": 1})
            await expect(counter).to_have_text("8")
            assert errors.errors == []
        finally:
            await page.close()


async def test_client_streams_chat_deltas_calls_methods_and_raises_mesh_errors(browser, mesh_factory, http_factory) -> None:
    await mesh_factory([PacedTriage, Counter])
    bridge = await http_factory()
    page = await browser.new_page()
    errors = PageErrors(page)
    try:
        await page.goto(f"{bridge.url}/static/example.html")
        result = await page.evaluate(
            """async () => {
                const { connect, MeshError } = await import("/client.js");
                const counter = connect("counter", "c1");
                await counter.ready;
                const added = await counter.call({ add: 2 });
                const reset = await counter.call(null, { method: "reset" });
                let error = null;
                try { await counter.call({ add: "x" }); }
                catch (e) { error = { mesh: e instanceof MeshError, code: e.code, status: e.status }; }
                const queued = await counter.send({ add: 5 });

                const triage = connect("triage", "t1");
                const run = triage.chat("What is the capital of France?");
                const deltas = [];
                for await (const delta of run) deltas.push(delta);
                const reply = await run.reply;
                const page = await triage.messages({ limit: 2 });
                triage.close();
                return { added, reset, error, queued: queued.status, deltas, reply, runId: run.id, page };
            }"""
        )
        assert result["added"] == {"value": 2} and result["reset"] == {"value": 0}
        assert result["error"] == {"mesh": True, "code": "schema_mismatch", "status": 422}
        assert result["queued"] == "pending"
        assert len(result["deltas"]) > 2  # the answer came as it was written, word by word
        assert "".join(result["deltas"]) == "[offline demo model] History Tutor: the capital of France is Paris."
        assert result["reply"]["status"] == "completed" and result["reply"]["run_id"] == result["runId"]
        assert result["page"]["more"] is True and len(result["page"]["items"]) == 2
        async with httpx.AsyncClient(base_url=bridge.url) as http:

            async def sent() -> bool:
                return bool((await http.get("/agents/counter/c1/state")).json()["state"] == {"value": 5})

            assert await eventually(sent)  # what send() queued ran
        assert errors.errors == []
    finally:
        await page.close()


async def test_client_follows_state_live_and_uses_a_bearer_token(browser, mesh_factory, http_factory) -> None:
    await mesh_factory([Counter])
    bridge = await http_factory(tokens=("t0k",))
    page = await browser.new_page()
    try:
        await page.goto(f"{bridge.url}/static/example.html?token=t0k")
        await page.evaluate(
            """async () => {
                const { connect } = await import("/client.js");
                window.values = [];
                window.agent = connect("counter", "live", { token: "t0k" });
                window.agent.on("state", ({ state }) => window.values.push(state ? state.value : null));
                await window.agent.ready;
            }"""
        )
        async with httpx.AsyncClient(base_url=bridge.url, headers={"Authorization": "Bearer t0k"}) as http:
            for _ in range(3):
                await http.post("/agents/counter/live", json={"add": 1})
        await page.wait_for_function("window.values.includes(3)")
        assert await page.evaluate("window.values.filter((v) => v !== null)") == [1, 2, 3]
        denied = await page.evaluate(
            """async () => {
                const { connect } = await import("/client.js");
                const stranger = connect("counter", "live", { live: false });
                let seen = null;
                stranger.on("unauthorized", (e) => { seen = e.status; });
                try { await stranger.call({ add: 1 }); return "called"; } catch (e) { return [e.code, e.status, seen]; }
            }"""
        )
        assert denied == ["unauthorized", 401, 401]
    finally:
        await page.close()


async def test_client_opens_the_agent_owned_connection_with_its_ticket(browser, mesh_factory, http_factory) -> None:
    await mesh_factory([Room])
    bridge = await http_factory(tokens=("t0k",))
    page = await browser.new_page()
    errors = PageErrors(page)
    try:
        await page.goto(f"{bridge.url}/static/example.html?token=t0k")
        said = await page.evaluate(
            """async () => {
                const { connect } = await import("/client.js");
                const room = connect("room", "lobby", { token: "t0k", live: false });
                const socket = await room.socket({ query: { name: "ann" } });
                const heard = new Promise((resolve) => { socket.onmessage = (message) => resolve(message.data); });
                await new Promise((resolve, reject) => { socket.onopen = resolve; socket.onerror = reject; });
                socket.send("hello");
                const line = await heard;
                socket.close();
                return line;
            }"""
        )
        assert orjson.loads(said) == {"from": "ann", "text": "hello"}  # the room said it to everyone in it
        assert errors.errors == []
    finally:
        await page.close()
