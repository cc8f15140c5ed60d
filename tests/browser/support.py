"""What the browser tests share: the sites they open, tabs that record alerts, chat actions."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from playwright.sync_api import BrowserContext, Page, Response

if TYPE_CHECKING:
    from ..conftest import ServerProcess

StartServer = Callable[..., "ServerProcess"]

ROOT: Final = Path(__file__).resolve().parents[2]
CHAT_DIR: Final = ROOT / "channel_asgi" / "demo"
COUNTER_DIR: Final = ROOT / "examples" / "viewer_counter"
WAIT_MS: Final = 5_000  # milliseconds any single browser wait may take


@dataclass
class Sites:
    """The origins of one test: the channel routes and the two page sites they allow."""

    channel: str
    chat: str
    counter: str
    start: StartServer

    def chat_url(self, origin: str | None = None) -> str:
        """Return the chat page on these channel routes, served from ``origin`` or ``chat``."""
        return f"{origin or self.chat}/index.html?channel={self.channel}"

    def counter_url(self) -> str:
        """Return the viewer counter page on these channel routes."""
        return f"{self.counter}/index.html?channel={self.channel}"

    def stranger(self) -> str:
        """Serve the chat from one more origin, which the channel routes do not allow."""
        return static_site(self.start, CHAT_DIR)


@dataclass
class Tab:
    """A page in a browser context of its own (another visitor), its alerts and uncaught errors."""

    page: Page
    context: BrowserContext
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Close the page, and with it its EventSource, and its context."""
        self.context.close()


def static_site(start: StartServer, directory: Path) -> str:
    """Serve ``directory`` at the root of a new loopback origin; return that origin."""
    args = ["-m", "http.server", "--bind", "127.0.0.1", "--directory", str(directory), "{port}"]
    return start(args).base


def channel_routes(start: StartServer, origins: list[str], options: dict[str, Any]) -> str:
    """Serve the channel routes, allowing ``origins``; return their base URL.

    Without ``options`` this is ``channel-asgi serve --cors-origin …``, as a user runs it; options
    the CLI has no flag for go, as JSON, to the app factory that ``serve`` itself runs on uvicorn.
    """
    if not options:
        cors = [arg for origin in origins for arg in ("--cors-origin", origin)]
        args = ["-m", "channel_asgi", "serve", "--port", "{port}", "--log-level", "warning"]
        return start([*args, *cors]).base
    factory = ["-m", "uvicorn", "--factory", "channel_asgi.cli:create_app"]
    args = [*factory, "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"]
    config = json.dumps({"cors_origins": origins, **options})
    return start(args, env={"CHANNEL_ASGI_CLI_OPTIONS": config}).base


def start_sites(start: StartServer, **options: Any) -> Sites:
    """Start the two page sites, then channel routes whose CORS allows exactly those origins."""
    chat = static_site(start, CHAT_DIR)
    counter = static_site(start, COUNTER_DIR)
    channel = channel_routes(start, [chat, counter], options)
    return Sites(channel=channel, chat=chat, counter=counter, start=start)


def is_publish(response: Response) -> bool:
    """Return whether ``response`` answers a page's ``POST /publish/…``."""
    return response.request.method == "POST" and "/publish/" in response.url


def open_chat(tab: Tab, url: str) -> Response:
    """Open the chat at ``url`` and wait until it holds a token and asked for the history.

    The seed's page publishes ``type: "request"`` as soon as ``init`` gave it a token; the reply to
    that POST is the sign that the page is subscribed and may send.
    """
    with tab.page.expect_response(is_publish) as reply:
        tab.page.goto(url)
    assert reply.value.status == 200, reply.value.text()
    return reply.value


def reload_chat(tab: Tab) -> Response:
    """Reload the chat and wait, as ``open_chat`` does, for its history request."""
    with tab.page.expect_response(is_publish) as reply:
        tab.page.reload()
    assert reply.value.status == 200, reply.value.text()
    return reply.value


def send(tab: Tab, username: str, text: str) -> Response:
    """Fill the chat form and submit it; return the reply to the publish."""
    tab.page.fill("#username", username)
    tab.page.fill("#message", text)
    with tab.page.expect_response(is_publish) as reply:
        tab.page.click("button[type=submit]")
    return reply.value
