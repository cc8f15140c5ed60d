"""Quart with channel_asgi wrapped around ``app.asgi_app`` under ``/channel``.

Run it from the repository root, then open http://127.0.0.1:8000/ in two tabs::

    uvicorn examples.quart_app.main:app
    quart --app examples.quart_app.main:app run --port 8000   # or Quart's own (hypercorn)

``GET /`` is the chat page, ``POST /announce`` publishes from a view (server-side emit) and
``GET /status`` reports what ``before_serving`` set up. Quart has no mount, so the channels wrap
its ASGI callable, the way Flask middleware wraps ``app.wsgi_app``: requests under ``/channel`` go
to them, everything else (``lifespan`` included, which runs ``before_serving``) to Quart. The
channels start on their first request and stop with the server.
"""

from __future__ import annotations

import time

from quart import Quart, jsonify, render_template, request
from quart.typing import ResponseReturnValue

from channel_asgi import ChannelApp, ChannelMiddleware

LOBBY = "lobby"  # the channel the page subscribes to

channels = ChannelApp()

app = Quart(__name__)
# Quart documents replacing asgi_app with middleware, but types it as a method taking hypercorn's
# TypedDict scopes, which an ASGI app typed with plain mappings (as Starlette's) does not match.
app.asgi_app = ChannelMiddleware(  # type: ignore[method-assign]  # Quart declares asgi_app a method
    app.asgi_app, channels, prefix="/channel"
)


@app.before_serving
async def startup() -> None:
    """Note when the app started (a real app would open its database pool here)."""
    app.config["STARTED_AT"] = time.time()


@app.get("/")
async def index() -> str:
    """Serve the chat page."""
    return await render_template("index.html")


@app.post("/announce")
async def announce() -> ResponseReturnValue:
    """Broadcast ``{"text": ...}`` to the lobby from the server (its author is ``"0"``)."""
    body = await request.get_json(silent=True)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text:
        return jsonify(error="text must be a non-empty string"), 400
    event_id = await channels.publish(LOBBY, {"text": text})
    return jsonify(id=event_id)


@app.get("/status")
async def status() -> ResponseReturnValue:
    """Report whether ``before_serving`` ran, and how many people are in the lobby."""
    started = "STARTED_AT" in app.config
    return jsonify(started=started, viewers=await channels.viewer_count(LOBBY))
