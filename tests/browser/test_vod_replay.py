"""``examples/vod_replay`` in headless Chromium: scrubbing the recording replays its chat.

The page reads the chat around the current media time from ``GET /channel/history/…`` and
shows what was said up to that time; the assertions read the DOM (no screenshot compared).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

import pytest
from playwright.sync_api import Locator, expect

from .support import ROOT, WAIT_MS, StartServer, Tab

pytestmark = pytest.mark.browser

OpenTab = Callable[[], Tab]

#: Sets the scrubber as a user dragging it does (an ``input`` event).
SCRUB: Final = """(seconds) => {
  const scrubber = document.getElementById('scrubber');
  scrubber.value = String(seconds);
  scrubber.dispatchEvent(new Event('input', {bubbles: true}));
}"""


def replay_page(start: StartServer, open_tab: OpenTab) -> Tab:
    """Serve the example (no video file: the scrubber) and open its page in a new tab."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    command = ["-m", "uvicorn", "examples.vod_replay.main:app", "--port", "{port}"]
    env = {"PYTHONPATH": path, "VOD_VIDEO": ""}
    base = start([*command, "--log-level", "warning"], env=env).base
    tab = open_tab()
    tab.page.goto(f"{base}/")
    return tab


def line(tab: Tab, text: str) -> Locator:
    return tab.page.locator("#chat li", has_text=text)


def test_scrubbing_shows_the_chat_up_to_the_media_time_and_posts_there(
    server_process: StartServer, open_tab: OpenTab
) -> None:
    """Forward, back and far ahead: the panel follows; a post lands at the current time."""
    tab = replay_page(server_process, open_tab)
    page = tab.page
    expect(page.locator("#chat li")).to_have_count(0)  # nothing is said before 0:01

    page.evaluate(SCRUB, 125)
    expect(line(tab, "what a goal")).to_have_count(1, timeout=WAIT_MS)
    expect(line(tab, "no way")).to_have_count(1)
    expect(line(tab, "replay it!")).to_have_count(0)  # at 2:11, not yet
    expect(page.locator("#time")).to_have_text("2:05")
    stamps = [
        float(s)
        for s in page.locator("#chat li").evaluate_all(
            "items => items.map((item) => item.dataset.timestamp)"
        )
    ]
    assert stamps == sorted(stamps) and stamps[-1] <= 125

    page.evaluate(SCRUB, 135)
    expect(line(tab, "replay it!")).to_have_count(1, timeout=WAIT_MS)
    page.evaluate(SCRUB, 60)
    expect(line(tab, "what a goal")).to_have_count(0, timeout=WAIT_MS)
    expect(line(tab, "the sound is great today")).to_have_count(1)

    page.evaluate(SCRUB, 300)  # far ahead: the windows around 5:00 are read now
    expect(page.locator("#time")).to_have_text("5:00")
    expect(line(tab, "halfway there")).to_have_count(0)  # at 5:01.5
    page.evaluate(SCRUB, 302)
    expect(line(tab, "halfway there")).to_have_count(1, timeout=WAIT_MS)

    page.wait_for_function("() => token !== ''", timeout=WAIT_MS)
    page.fill("#name", "eve")
    page.fill("#text", "posted on the replay")
    with page.expect_response(lambda r: "/publish/" in r.url) as reply:
        page.click("#post button[type=submit]")
    assert reply.value.status == 200, reply.value.text()
    posted = line(tab, "posted on the replay")
    expect(posted).to_have_count(1, timeout=WAIT_MS)
    assert float(posted.get_attribute("data-timestamp") or "0") == 302
    page.evaluate(SCRUB, 301)
    expect(posted).to_have_count(0, timeout=WAIT_MS)
    assert tab.errors == [] and tab.dialogs == []


def test_play_advances_the_media_time_and_pause_stops_it(
    server_process: StartServer, open_tab: OpenTab
) -> None:
    """Without a video file the scrubber plays by itself, and the chat follows it."""
    tab = replay_page(server_process, open_tab)
    page = tab.page
    page.evaluate(SCRUB, 3.5)
    page.click("#play")
    expect(page.locator("#play")).to_have_text("Pause")
    expect(line(tab, "here we go!")).to_have_count(1, timeout=WAIT_MS)  # said at 0:04
    page.click("#play")
    expect(page.locator("#play")).to_have_text("Play")
    assert float(page.locator("#scrubber").input_value()) > 4
    assert tab.errors == []
