"""Ten channels in one connection, in seven tabs at once: every channel of every tab delivers.

Ten single-channel EventSources would need ten connections per tab, and a browser profile holds
at most six per origin over HTTP/1.1: a page of ten channels would hang on its own. With one
stream of several channels (``/subscribe?channel=...``) a tab needs one connection, so six tabs of
one profile carry sixty channels. A seventh tab of that same profile would still wait for a free
connection (one stream per tab, six per origin: measured, and said in docs/protocol.md), so the
seventh here is another visitor's, in a profile of its own (and it publishes: the full profile
could not even POST to the origin).

A WebSocket is not one of those six (Chromium allows 255 per host), so with ``/ws?channel=...``
all seven tabs are one profile's, and every tab publishes over its own socket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest
from playwright.sync_api import Browser, Page, expect

from .support import WAIT_MS, StartServer, channel_routes, static_site

pytestmark = pytest.mark.browser

PAGES: Final = Path(__file__).parent / "pages"
CHANNELS: Final = 10


def open_page(page: Page, url: str) -> int:
    """Open the page and wait for its ten inits; return the status of its one stream."""
    page.on("pageerror", lambda error: pytest.fail(f"page error: {error}"))
    with page.expect_response(lambda response: "/subscribe?" in response.url) as opened:
        page.goto(url)
    expect(page.locator("#inits")).to_have_text(str(CHANNELS), timeout=WAIT_MS)
    return opened.value.status


def test_seven_tabs_of_ten_channels_in_one_event_source_each_deliver_every_channel(
    server_process: StartServer, browser: Browser
) -> None:
    """Six tabs of one profile and one of another: ten inits each, then every broadcast."""
    pages = static_site(server_process, PAGES)
    base = channel_routes(server_process, [pages], {})
    url = f"{pages}/many_channels.html?base={base}&n={CHANNELS}"
    profile, visitor = browser.new_context(), browser.new_context()
    try:
        tabs = [profile.new_page() for _ in range(6)] + [visitor.new_page()]
        assert [open_page(tab, url) for tab in tabs] == [200] * 7
        # The visitor publishes: the profile's six connections to the origin are its streams.
        assert tabs[-1].evaluate("publishAll()") == [200] * CHANNELS
        wanted = [f"room-{k}: hello room-{k}" for k in range(CHANNELS)]
        for tab in tabs:
            expect(tab.locator("#channels li")).to_have_text(wanted, timeout=WAIT_MS)
    finally:
        profile.close()
        visitor.close()


def open_socket_page(page: Page, url: str) -> None:
    """Open the page over one WebSocket and wait for its ten inits."""
    page.on("pageerror", lambda error: pytest.fail(f"page error: {error}"))
    page.goto(url)
    expect(page.locator("#inits")).to_have_text(str(CHANNELS), timeout=WAIT_MS)


def test_seven_tabs_of_one_profile_with_ten_channels_on_one_websocket_each_deliver(
    server_process: StartServer, browser: Browser
) -> None:
    """Seven tabs of one profile, one socket of ten channels each: every tab sees every channel."""
    pages = static_site(server_process, PAGES)
    base = channel_routes(server_process, [pages], {})
    url = f"{pages}/many_channels.html?base={base}&n={CHANNELS}&transport=ws"
    profile = browser.new_context()
    try:
        tabs = [profile.new_page() for _ in range(7)]
        for tab in tabs:
            open_socket_page(tab, url)
        assert tabs[-1].evaluate("publishAll()") == [200] * CHANNELS
        wanted = [f"room-{k}: hello room-{k}" for k in range(CHANNELS)]
        for tab in tabs:
            expect(tab.locator("#channels li")).to_have_text(wanted, timeout=WAIT_MS)
        # The profile's HTTP connections are free too: a tab still POSTs to the origin.
        assert tabs[0].evaluate("postAll()") == [200] * CHANNELS
    finally:
        profile.close()
