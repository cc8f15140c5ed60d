"""Starlette with channel_asgi mounted under ``/channel``.

Run it from the repository root, then open http://127.0.0.1:8000/ in two tabs::

    uvicorn examples.starlette_app.main:app

``GET /`` is the chat page, ``POST /announce`` publishes from a view (server-side emit) and
``GET /status`` reports what the lifespan set up. Starlette does not pass ``lifespan`` on to the
mounted channels, so they start on their first request (a subscribe, a publish, or
``channels.publish`` in a view) and stop with the server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route

from channel_asgi import ChannelApp

PAGE = (Path(__file__).parent / "index.html").read_text()
LOBBY = "lobby"  # the channel the page subscribes to

channels = ChannelApp()


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Note when the app started (a real app would open its database pool here)."""
    app.state.started_at = time.time()
    yield


async def index(request: Request) -> HTMLResponse:
    """Serve the chat page."""
    return HTMLResponse(PAGE)


async def announce(request: Request) -> JSONResponse:
    """Broadcast ``{"text": ...}`` to the lobby from the server (its author is ``"0"``)."""
    try:
        body = await request.json()
    except ValueError:  # not JSON
        body = None
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text:
        return JSONResponse({"error": "text must be a non-empty string"}, status_code=400)
    event_id = await channels.publish(LOBBY, {"text": text})
    return JSONResponse({"id": event_id})


async def status(request: Request) -> JSONResponse:
    """Report whether the lifespan ran, and how many people are in the lobby."""
    started = hasattr(request.app.state, "started_at")
    return JSONResponse({"started": started, "viewers": await channels.viewer_count(LOBBY)})


app = Starlette(
    routes=[
        Route("/", index),
        Route("/announce", announce, methods=["POST"]),
        Route("/status", status),
        Mount("/channel", app=channels),
    ],
    lifespan=lifespan,
)
