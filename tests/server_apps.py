"""The apps ``tests/test_servers.py`` runs on every server, importable by any server's command line.

``channels`` is a top-level ``ChannelApp`` (it handles ``lifespan`` itself) and ``fastapi`` a
FastAPI host with the same channels mounted under ``/channel``, as users run it; FastAPI does not
pass ``lifespan`` on, so there they start on their first request. Both are built from the CLI's
options in ``CHANNEL_ASGI_CLI_OPTIONS`` (``{"redis": URL, "redis_prefix": ..., "secret": ...}``
for the workers on Redis), so one module serves every configuration of the tests.

Daphne has no factory option, hence module-level objects built at import.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from channel_asgi import ChannelApp
from channel_asgi.cli import create_app

built = create_app()
assert isinstance(built, ChannelApp)
channels: ChannelApp = built

fastapi = FastAPI()
fastapi.mount("/channel", channels)


class Announcement(BaseModel):
    """The body of ``POST /announce/{channel}``."""

    text: str


@fastapi.get("/")
async def index() -> dict[str, str]:
    """A route of the host's own, next to the mounted channels."""
    return {"host": "fastapi"}


@fastapi.post("/announce/{channel}")
async def announce(channel: str, announcement: Announcement) -> dict[str, str | None]:
    """Publish from a view of the host (the server-side API)."""
    event_id = await channels.publish(channel, {"text": announcement.text})
    return {"id": event_id}
