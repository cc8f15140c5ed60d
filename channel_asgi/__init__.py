"""channel_asgi: real-time channels (SSE, the inLive Real-Time Widget API) for any ASGI app.

Mount one object and the app's pages can subscribe with ``EventSource`` to
``/subscribe/{channel}`` and publish with ``fetch`` to ``/publish/{channel}?token=…``::

    from channel_asgi import ChannelApp

    channels = ChannelApp()
    app.mount("/channel", channels)           # FastAPI / Starlette
"""

from __future__ import annotations

from .app import ChannelApp
from .auth import Action, Auth, Request
from .connection import Connection
from .errors import ChannelError, Reject, StorageTimeout, StorageUnavailable
from .middleware import ChannelMiddleware
from .protocol import Envelope
from .storage.base import Storage

__all__ = [
    "Action",
    "Auth",
    "ChannelApp",
    "ChannelError",
    "ChannelMiddleware",
    "Connection",
    "Envelope",
    "Reject",
    "Request",
    "Storage",
    "StorageTimeout",
    "StorageUnavailable",
]

__version__ = "0.1.0"
