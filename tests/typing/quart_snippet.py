"""Quart wrapped by ``ChannelMiddleware``; the typing test runs ``mypy --strict`` on it.

``channel_asgi/middleware.py`` names Quart's ``app.asgi_app`` as a host the middleware wraps. Quart
types its ASGI callables with precise TypedDict scopes and events (hypercorn's), so this checks
that the middleware accepts such a host, not only one typed with loose mappings. Not a test module:
pytest neither collects nor imports it.
"""

from __future__ import annotations

from quart import Quart

from channel_asgi import ChannelApp, ChannelMiddleware

channels = ChannelApp(secret="not-a-real-secret")
quart_app = Quart(__name__)

# What a user serves with ``uvicorn module:asgi``: the host's ASGI callable, wrapped.
asgi = ChannelMiddleware(quart_app.asgi_app, channels, prefix="/channel")
# The Quart app object is an ASGI app as well.
asgi_from_app = ChannelMiddleware(quart_app, channels, prefix="/channel")
