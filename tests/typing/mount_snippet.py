"""How a user mounts channel_asgi; ``test_mount_typechecks.py`` runs ``mypy --strict`` over it.

This is not a test module (no ``test_`` prefix, so pytest neither collects nor imports it) and it is
outside pyproject's ``[tool.mypy] files``: only the typing test checks it. Every line is code a user
would write; ``assert_type`` pins the types the server-side API promises.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount
from typing_extensions import assert_type

from channel_asgi import ChannelApp, ChannelMiddleware, Connection, Envelope, Reject
from channel_asgi.storage import MemoryStorage

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

channels = ChannelApp(
    storage=MemoryStorage(),
    secret="not-a-real-secret",
    widget_keys={"6b9f652a"},
    cors_origins=["https://example.com"],
)

# Starlette: a Mount route.
starlette_app = Starlette(routes=[Mount("/channel", app=channels)])

# FastAPI: app.mount.
fastapi_app = FastAPI()
fastapi_app.mount("/channel", channels)


# A host without mounts, as a plain ASGI 3 callable, wrapped by the middleware.
async def host(scope: Scope, receive: Receive, send: Send) -> None:
    """A minimal host application."""
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


wrapped = ChannelMiddleware(host, channels, prefix="/channel")
wrapped_starlette = ChannelMiddleware(starlette_app, channels)

# The middleware is itself an ASGI app a framework can mount or a server can run.
outer = Starlette(routes=[Mount("/", app=wrapped)])


@channels.on_connect
async def greet(conn: Connection) -> None:
    """Greet each new subscriber."""
    await channels.publish(conn.channel, {"hello": conn.user_id})


@channels.on_publish
async def moderate(envelope: Envelope, conn: Connection) -> None:
    """Refuse shouting."""
    if envelope.message == "SHOUT":
        raise Reject(422, "No shouting")


# The decorators hand the function back unchanged.
connect_hook: Callable[[Connection], Awaitable[None]] = greet
publish_hook: Callable[[Envelope, Connection], Awaitable[None]] = moderate


async def server_side() -> None:
    """The server-side API, used from a host view."""
    async with channels:
        event_id = await channels.publish("x", {"text": "hi"})
        assert_type(event_id, str | None)
        await channels.publish(
            "x", "psst", type="private", author_id="u-1", to_user_id="u-2", timestamp=1.5
        )
        assert_type(await channels.viewer_count("x"), int)
        async with channels.subscribe("x") as events:
            async for event in events:
                assert_type(event, Envelope)
                assert_type(event.id, str | None)
                assert_type(event.type, str)
                assert_type(event.stream_id, str)
                assert_type(event.timestamp, float)
                break
        await channels.close_channel("x")
        await channels.open_channel("x")
    await channels.aclose()
