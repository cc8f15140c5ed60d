"""The seed pages in headless Chromium: the live chat of seed 001 and inLive's viewer counter.

The pages come from other origins than the channel routes, as on JSFiddle, so every subscribe and
publish below crosses origins and passes (or fails) the browser's own CORS checks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from .support import (
    WAIT_MS,
    Sites,
    StartServer,
    Tab,
    open_chat,
    reload_chat,
    send,
    start_sites,
)

pytestmark = pytest.mark.browser

OpenTab = Callable[[], Tab]

# Sends an empty publish from the page and says whether the page could read the reply.
PROBE: Final = """async (url) => {
  try {
    const response = await fetch(url, {
      method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}',
    });
    return `status ${response.status}`;
  } catch (error) {
    return `${error.name}: ${error.message}`;
  }
}"""


def origin(url: str) -> str:
    """Return the ``scheme://host:port`` of ``url``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def chat_lines(tab: Tab, lines: list[str]) -> None:
    """Wait until the chat list of ``tab`` holds exactly ``lines``, in order."""
    expect(tab.page.locator("#list li")).to_have_text(lines, timeout=WAIT_MS)


def test_chat_message_sent_from_one_page_appears_on_both(
    sites: Sites, open_tab: OpenTab, artifacts: Path
) -> None:
    """Two visitors of the chat page see each other's messages live, once each, across origins."""
    alice, bob = open_tab(), open_tab()
    ready = open_chat(alice, sites.chat_url())
    open_chat(bob, sites.chat_url())

    # The page lives on another origin, which the channel routes allow by name.
    page_origin = origin(alice.page.url)
    assert page_origin == sites.chat != sites.channel
    assert origin(ready.url) == sites.channel
    assert ready.request.header_value("origin") == page_origin
    assert ready.header_value("access-control-allow-origin") == page_origin

    reply = send(alice, "alice", "Hello from Alice")
    assert reply.status == 200, reply.text()
    chat_lines(alice, ["alice: Hello from Alice"])
    chat_lines(bob, ["alice: Hello from Alice"])
    expect(alice.page.locator("#message")).to_have_value("", timeout=WAIT_MS)

    reply = send(bob, "bob", "Hi Alice!")
    assert reply.status == 200, reply.text()
    chat_lines(alice, ["alice: Hello from Alice", "bob: Hi Alice!"])
    chat_lines(bob, ["alice: Hello from Alice", "bob: Hi Alice!"])

    screenshot = artifacts / "chat.png"
    screenshot.unlink(missing_ok=True)
    alice.page.screenshot(path=screenshot, full_page=True)
    assert screenshot.stat().st_size > 0
    assert alice.dialogs == bob.dialogs == []
    assert alice.errors == bob.errors == []


def test_reloaded_chat_page_shows_the_history_in_order(sites: Sites, open_tab: OpenTab) -> None:
    """A reloaded or newly opened page gets the earlier messages back through ``request``."""
    alice, bob = open_tab(), open_tab()
    open_chat(alice, sites.chat_url())
    open_chat(bob, sites.chat_url())
    history = [(alice, "alice", "first"), (bob, "bob", "second"), (alice, "alice", "third")]
    for tab, username, text in history:
        assert send(tab, username, text).status == 200
    lines = [f"{username}: {text}" for _, username, text in history]
    chat_lines(bob, lines)

    reload_chat(bob)
    chat_lines(bob, lines)
    late = open_tab()
    open_chat(late, sites.chat_url())
    chat_lines(late, lines)

    # Live messages keep coming after the replayed history.
    assert send(late, "carol", "fourth").status == 200
    for tab in (alice, bob, late):
        chat_lines(tab, [*lines, "carol: fourth"])
    assert alice.dialogs == bob.dialogs == late.dialogs == []
    assert alice.errors == bob.errors == late.errors == []


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="join-leave"),
        # Past system_events_max_viewers, joins and leaves arrive as periodic "count" events.
        pytest.param({"system_events_max_viewers": 1, "presence_interval": 0.1}, id="count"),
    ],
)
def test_viewer_counter_counts_pages_as_they_open_and_close(
    server_process: StartServer, open_tab: OpenTab, options: dict[str, Any]
) -> None:
    """The counter shows init's viewer_count, then follows every system event."""
    sites = start_sites(server_process, **options)

    def open_counter() -> Tab:
        tab = open_tab()
        tab.page.goto(sites.counter_url())
        return tab

    def shows(count: int, *tabs: Tab) -> None:
        for tab in tabs:
            expect(tab.page.locator("#viewers")).to_have_text(str(count), timeout=WAIT_MS)

    a = open_counter()
    assert origin(a.page.url) == sites.counter != sites.channel
    shows(1, a)
    b = open_counter()
    shows(2, a, b)
    c = open_counter()
    shows(3, a, b, c)
    b.close()
    shows(2, a, c)
    c.close()
    shows(1, a)
    assert a.dialogs == a.errors == []


def test_page_from_an_origin_not_allowed_can_neither_subscribe_nor_publish(
    sites: Sites, open_tab: OpenTab
) -> None:
    """The browser blocks the chat served from an origin outside cors_origins, both ways."""
    stranger = sites.stranger()
    alice, eve = open_tab(), open_tab()
    open_chat(alice, sites.chat_url())

    with eve.page.expect_event("requestfailed", lambda r: "/subscribe/" in r.url) as blocked:
        eve.page.goto(sites.chat_url(stranger))
    assert origin(eve.page.url) == stranger
    assert blocked.value.failure == "net::ERR_FAILED"
    # A CORS failure makes EventSource give up instead of reconnecting: no init, no token.
    eve.page.wait_for_function("() => eventSource.readyState === EventSource.CLOSED")

    eve.page.fill("#username", "eve")
    eve.page.fill("#message", "let me in")
    with eve.page.expect_event("requestfailed", lambda r: "/publish/" in r.url) as refused:
        eve.page.click("button[type=submit]")
    assert refused.value.failure == "net::ERR_FAILED"

    # The same request is readable from the allowed origin (401: it carries no token).
    publish_url = f"{sites.channel}/publish/15"
    assert eve.page.evaluate(PROBE, publish_url) == "TypeError: Failed to fetch"
    assert alice.page.evaluate(PROBE, publish_url) == "status 401"

    # Broadcasts arrive in order, so Alice's list proves that Eve's message never went out.
    assert send(alice, "alice", "only me").status == 200
    chat_lines(alice, ["alice: only me"])
    chat_lines(eve, [])
    assert alice.dialogs == eve.dialogs == []
    assert alice.errors == []
