"""Headless Chromium (Debian's package) for the dashboard and client.js tests, driven by Playwright."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

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
expect.set_options(timeout=15_000)  # the page waits on real workers, on 2 cores shared with other tests

SCREENSHOTS = os.environ.get("MESH_SCREENSHOTS")
"""Also copy the screenshots tests take here (the README's are made this way)."""


@contextlib.asynccontextmanager
async def open_browser() -> AsyncIterator[Browser]:
    """Chromium for one test (a module's `browser` fixture: `async with open_browser() as b: yield b`)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class PageErrors:
    """Uncaught errors and errors logged by a page's scripts: a test ends asserting there were none.
    (The browser's own notes of 4xx answers are not counted: tests send bad input on purpose.)"""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)


async def screenshot(page: Page, directory: Path, name: str) -> Path:
    """A screenshot as a test artifact in `directory`, copied to $MESH_SCREENSHOTS when set."""
    path = directory / name
    image = await page.screenshot(path=str(path), full_page=True)
    if SCREENSHOTS:
        await asyncio.to_thread(_keep, image, Path(SCREENSHOTS) / name)
    return path


def _keep(image: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image)


async def horizontal_overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than its viewport (0: no horizontal scrolling)."""
    width: int = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    return width
