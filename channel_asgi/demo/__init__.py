"""The live chat of seed 001, served next to the channel routes (``channel-asgi demo``)."""

from __future__ import annotations

from importlib.resources import files
from typing import Final

from ..app import ChannelApp
from ..http import Receive, Scope, Send

__all__ = ["DemoApp", "page"]

_TYPES: Final = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8"}
_PAGES: Final = {"/": "index.html", "/index.html": "index.html", "/script.js": "script.js"}


def page(name: str) -> bytes:
    """Return the bytes of a demo file (``index.html`` or ``script.js``)."""
    return files(__package__).joinpath(name).read_bytes()


class DemoApp:
    """Serve the chat page at ``/`` and the channel routes beside it.

    Args:
        channels: the app serving ``/subscribe/…`` and ``/publish/…``.
    """

    def __init__(self, channels: ChannelApp) -> None:
        self.channels = channels
        self._pages = {path: (page(name), name) for path, name in _PAGES.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a demo file, or hand the request to the channel routes."""
        found = self._pages.get(scope.get("path", "")) if scope["type"] == "http" else None
        if found is None or scope.get("method") not in ("GET", "HEAD"):
            await self.channels(scope, receive, send)
            return
        body, name = found
        headers = [
            (b"content-type", _TYPES[name[name.rindex(".") :]]),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-cache"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": body if scope["method"] == "GET" else b""}
        )
