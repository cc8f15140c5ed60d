"""The demo app (``channel-asgi demo``): its page and script, and the channels beside them."""

from __future__ import annotations

import httpx

from channel_asgi import ChannelApp
from channel_asgi.demo import DemoApp


async def test_the_demo_serves_its_page_and_script_and_passes_the_rest_on(serve) -> None:
    base = await serve(DemoApp(ChannelApp(secret="d" * 40)))
    async with httpx.AsyncClient(trust_env=False) as http:
        page = await http.get(f"{base}/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert b"<script" in page.content
        script = await http.get(f"{base}/script.js")
        assert script.headers["content-type"].startswith(
            ("text/javascript", "application/javascript")
        )
        assert "EventSource" in script.text
        head = await http.head(f"{base}/index.html")
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["content-length"]) == len(page.content)
        # Anything else is the channels' own routes and refusals.
        refused = await http.post(f"{base}/")
        assert refused.status_code == 404
        assert refused.json()["code"] == 404
