"""Fixtures for the browser tests: Debian's chromium driven by Playwright, and the sites it opens.

Every site is a child process on its own loopback port, so the pages and the channel routes are
different origins and the browser enforces CORS for real: ``python -m http.server`` serves the
pages, ``channel-asgi serve --cors-origin …`` the channel routes. The tests are plain sync tests:
sync Playwright runs an event loop of its own, which must not nest inside anyio's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest
from playwright.sync_api import Browser, Dialog, sync_playwright

from .support import ROOT, WAIT_MS, Sites, StartServer, Tab, start_sites

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, shared by the tests of this package."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=4 * WAIT_MS
        )
        yield browser
        browser.close()


@pytest.fixture
def sites(server_process: StartServer) -> Sites:
    """The page sites and the channel routes (``channel-asgi serve``) of one test."""
    return start_sites(server_process)


@pytest.fixture
def open_tab(browser: Browser) -> Iterator[Callable[[], Tab]]:
    """Open blank pages, each in a fresh context: its own connections, like another visitor."""
    tabs: list[Tab] = []

    def open_() -> Tab:
        context = browser.new_context(viewport={"width": 800, "height": 720})
        context.set_default_timeout(WAIT_MS)
        tab = Tab(context.new_page(), context)

        def record(dialog: Dialog) -> None:
            tab.dialogs.append(dialog.message)
            dialog.dismiss()

        tab.page.on("dialog", record)
        tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
        tabs.append(tab)
        return tab

    yield open_
    for tab in tabs:
        tab.close()


@pytest.fixture
def artifacts() -> Path:
    """The git-ignored folder for what a run leaves for people to look at (screenshots)."""
    folder = ROOT / "test-artifacts"
    folder.mkdir(exist_ok=True)
    return folder
