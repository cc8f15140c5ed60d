"""``ChannelMiddleware``: serve the channel routes under a prefix of a host without mounts.

Django's ``get_asgi_application()`` and Quart's ``app.asgi_app`` have no ``mount``; wrapping them
sends requests under the prefix to the ``ChannelApp`` and everything else (``http``, ``websocket``
and ``lifespan``) to the host, untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["ChannelMiddleware"]

# Any ASGI callable: hosts type their scope precisely (Quart uses hypercorn's TypedDicts), and a
# callable taking a narrower scope is still a valid ASGI app to wrap.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class ChannelMiddleware:
    """Route ``{prefix}/…`` to ``channels`` and everything else to ``app``.

    Args:
        app: the host ASGI application.
        channels: the :class:`~channel_asgi.ChannelApp` (or any ASGI app) to serve under ``prefix``.
        prefix: the path the channel routes live under, such as ``"/channel"``.
    """

    def __init__(self, app: ASGIApp, channels: ASGIApp, prefix: str = "/channel") -> None:
        if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"prefix must start with '/' and not end with one, got {prefix!r}")
        self.app = app
        self.channels = channels
        self.prefix = prefix

    # Typed loosely (Any) so that `quart_app.asgi_app = ChannelMiddleware(...)` type-checks.
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Dispatch one ASGI connection."""
        if scope["type"] in ("http", "websocket"):
            path: str = scope.get("path", "")
            root: str = scope.get("root_path", "")
            local = path[len(root) :] if root and path.startswith(root) else path
            if local == self.prefix or local.startswith(self.prefix + "/"):
                child = dict(scope)
                child["root_path"] = root + self.prefix
                if not path.startswith(root):
                    child["path"] = root + path  # keep the full path, as ASGI 3 servers do
                await self.channels(child, receive, send)
                return
        await self.app(scope, receive, send)
