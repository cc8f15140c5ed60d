"""The apps ``tests/test_servers.py`` runs on every server, importable by any server's command line.

``channels`` is a top-level ``ChannelApp`` (it handles ``lifespan`` itself), ``fastapi`` a
FastAPI host with the same channels mounted under ``/channel``, as users run it, and ``quart`` a
Quart host with them wrapped around its ASGI callable (``ChannelMiddleware``) for ``quart run``;
neither host passes ``lifespan`` on, so there they start on their first request. All are built
from the CLI's options in ``CHANNEL_ASGI_CLI_OPTIONS`` (``{"redis": URL, "redis_prefix": ...,
"secret": ...}`` for the workers on Redis), so one module serves every configuration of the
tests.

Daphne has no factory option, hence module-level objects built at import.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel
from quart import Quart

from channel_asgi import ChannelApp, ChannelMiddleware
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


quart = Quart(__name__)
quart.asgi_app = ChannelMiddleware(  # type: ignore[method-assign]  # as examples/quart_app
    quart.asgi_app, channels, prefix="/channel"
)


@quart.get("/")
async def quart_index() -> dict[str, str]:
    """A route of the Quart host's own."""
    return {"host": "quart"}
