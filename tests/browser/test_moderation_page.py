"""``examples/moderation`` in headless Chromium: a moderator deletes and bans, viewers see it live.

The example (a FastAPI host serving both pages and the channel routes) runs under uvicorn in a
child process; every tab is a browser context of its own, so each is another visitor.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

import pytest
from playwright.sync_api import expect

from .support import ROOT, WAIT_MS, StartServer, Tab, is_publish

pytestmark = pytest.mark.browser

OpenTab = Callable[[], Tab]
KEY: Final = "browser-moderator-key"


@pytest.fixture
def base(server_process: StartServer) -> str:
    """Serve the example; return its base URL."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "MODERATOR_KEY": KEY}
    command = ["-m", "uvicorn", "examples.moderation.main:app", "--port", "{port}"]
    return server_process([*command, "--log-level", "warning"], env=env).base


def join(tab: Tab, base: str, name: str) -> None:
    """Open the chat, join as ``name``, and wait until the page has asked for the history."""
    tab.page.goto(f"{base}/")
    tab.page.fill("#name", name)
    with tab.page.expect_response(is_publish) as reply:  # the page's request, after init
        tab.page.click("#join button")
    assert reply.value.status == 200, reply.value.text()


def say(tab: Tab, text: str) -> None:
    """Send a message from the chat page and wait for the reply to its publish."""
    tab.page.fill("#text", text)
    with tab.page.expect_response(is_publish) as reply:
        tab.page.click("#send button")
    assert reply.value.status == 200, reply.value.text()


def test_a_moderator_deletes_a_message_and_bans_a_viewer_and_the_chat_updates_live(
    base: str, open_tab: OpenTab
) -> None:
    """Delete: the message leaves every page. Ban: the banned viewer's page says so."""
    alice, mallory, moderator = open_tab(), open_tab(), open_tab()
    join(alice, base, "alice")
    join(mallory, base, "mallory")
    with moderator.page.expect_response(is_publish):
        moderator.page.goto(f"{base}/moderator")
    moderator.page.fill("#key", KEY)

    say(mallory, "buy cheap followers")
    say(alice, "hello everyone")
    for tab in (alice, mallory):
        expect(tab.page.locator("#messages li")).to_have_text(
            ["mallory: buy cheap followers", "alice: hello everyone"], timeout=WAIT_MS
        )
    spam = moderator.page.locator("#messages li", has_text="buy cheap followers")
    expect(spam).to_have_count(1, timeout=WAIT_MS)

    with moderator.page.expect_response(lambda r: "/moderation/delete" in r.url) as deleted:
        spam.locator("[data-action=delete]").click()
    assert deleted.value.status == 200, deleted.value.text()
    for tab in (alice, mallory, moderator):
        expect(tab.page.locator("#messages li", has_text="followers")).to_have_count(
            0, timeout=WAIT_MS
        )
    expect(alice.page.locator("#messages li")).to_have_text(
        ["alice: hello everyone"], timeout=WAIT_MS
    )

    say(mallory, "you cannot stop me")
    last = moderator.page.locator("#messages li", has_text="you cannot stop me")
    expect(last).to_have_count(1, timeout=WAIT_MS)
    with moderator.page.expect_response(lambda r: "/moderation/ban" in r.url) as banned:
        last.locator("[data-action=ban]").click()
    assert banned.value.status == 200, banned.value.text()
    expect(mallory.page.locator("#status")).to_have_text(
        "A moderator has banned you from this chat.", timeout=WAIT_MS
    )
    expect(mallory.page.locator("#send")).to_be_hidden(timeout=WAIT_MS)
    expect(alice.page.locator("#status")).to_have_text("", timeout=WAIT_MS)
    say(alice, "peace at last")
    expect(alice.page.locator("#messages li").last).to_have_text(
        "alice: peace at last", timeout=WAIT_MS
    )
    assert alice.errors == mallory.errors == moderator.errors == []
    assert alice.dialogs == mallory.dialogs == moderator.dialogs == []


def test_the_moderator_routes_refuse_a_wrong_key_from_the_page(
    base: str, open_tab: OpenTab
) -> None:
    """Without the key, the page's Delete gets a 401, says so, and the message stays."""
    alice, moderator = open_tab(), open_tab()
    join(alice, base, "alice")
    with moderator.page.expect_response(is_publish):
        moderator.page.goto(f"{base}/moderator")
    moderator.page.fill("#key", "guess")
    say(alice, "keep me")
    item = moderator.page.locator("#messages li", has_text="keep me")
    expect(item).to_have_count(1, timeout=WAIT_MS)
    with moderator.page.expect_response(lambda r: "/moderation/delete" in r.url) as refused:
        item.locator("[data-action=delete]").click()
    assert refused.value.status == 401
    expect(moderator.page.locator("#log")).to_contain_text("Moderators only", timeout=WAIT_MS)
    expect(alice.page.locator("#messages li")).to_have_text(["alice: keep me"], timeout=WAIT_MS)
