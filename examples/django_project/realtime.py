"""The project's one ``ChannelApp``: ``asgi.py`` serves it, views publish through it."""

from __future__ import annotations

from channel_asgi import ChannelApp

LOBBY = "lobby"  # the channel the page subscribes to

channels = ChannelApp()
