"""FastAPI with channel_asgi mounted under ``/channel``.

Run it from the repository root, then open http://127.0.0.1:8000/ in two tabs::

    uvicorn examples.fastapi_app.main:app

``GET /`` is the chat page, ``POST /announce`` publishes from a view (server-side emit) and
``GET /status`` reports what the lifespan set up. FastAPI does not pass ``lifespan`` on to mounted
apps, so the lifespan enters ``async with channels:`` to start the channels with the server (without
it they would start on their first request) and to stop them with it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from channel_asgi import ChannelApp

PAGE = (Path(__file__).parent / "index.html").read_text()
LOBBY = "lobby"  # the channel the page subscribes to

channels = ChannelApp()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the channels with the server, and note when the app started."""
    async with channels:
        app.state.started_at = time.time()
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/channel", channels)


class Announcement(BaseModel):
    """The body of ``POST /announce``."""

    text: str = Field(min_length=1, max_length=500)


class Status(BaseModel):
    """The reply of ``GET /status``."""

    started: bool
    viewers: int


@app.get("/", response_class=HTMLResponse)
async def index() -> str:
    """Serve the chat page."""
    return PAGE


@app.post("/announce")
async def announce(announcement: Announcement) -> dict[str, str | None]:
    """Broadcast ``announcement`` to the lobby from the server (its author is ``"0"``)."""
    event_id = await channels.publish(LOBBY, {"text": announcement.text})
    return {"id": event_id}


@app.get("/status")
async def status(request: Request) -> Status:
    """Report whether the lifespan ran, and how many people are in the lobby."""
    started = hasattr(request.app.state, "started_at")
    return Status(started=started, viewers=await channels.viewer_count(LOBBY))
