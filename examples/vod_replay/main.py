"""A recorded stream's page: the video (or a scrubber) and its chat, replayed by media time.

Run it from the repository root, then open http://127.0.0.1:8000/ ::

    uvicorn examples.vod_replay.main:app

The page plays a ten-minute recording: with no video file, a scrubber with play and pause stands
for the player; give one with ``VOD_VIDEO=/path/to/recording.mp4`` and the page shows a
``<video>``. Its chat panel shows what was said up to the current media time, read a window
at a time from ``GET /channel/history/vod/demo?from=&to=&after=``; scrubbing or seeking reads
the windows around the new time. A message posted from the page carries the current media time
as its ``timestamp``, so the next viewer sees it at that point of the recording.

The channel ``vod/{id}`` keeps an archive (``archive=5000``); at start, an empty archive gets a
made-up chat spread over the recording, so that there is something to replay.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Mount, Route

from channel_asgi import ChannelApp

HERE: Final = Path(__file__).parent
STREAM: Final = "vod/demo"  # the recording's channel
DURATION: Final = 600.0  # seconds of the recording when there is no video file
VIDEO: Final = os.environ.get("VOD_VIDEO") or None

channels = ChannelApp()
channels.channel("vod/{id}", archive=5000)

#: The made-up chat of the recording: (media time, who, what).
SAMPLE: Final = [
    (4.0, "ana", "here we go!"),
    (12.5, "ben", "hi from Lisbon"),
    (33.0, "cleo", "the sound is great today"),
    (61.2, "ana", "that intro though"),
    (95.0, "dev", "first question coming up"),
    (120.4, "ben", "what a goal"),
    (120.4, "cleo", "no way"),
    (131.0, "dev", "replay it!"),
    (188.8, "ana", "this part is my favourite"),
    (242.0, "ben", "brb"),
    (301.5, "cleo", "halfway there"),
    (365.0, "dev", "the demo works"),
    (433.3, "ana", "who else is watching the replay?"),
    (512.0, "ben", "encore"),
    (590.0, "cleo", "bye all"),
]


async def seed_the_chat() -> None:
    """Give an empty archive the sample chat, and a crowd of short messages around it."""
    if await channels.history(STREAM, limit=1):
        return
    crowd = random.Random(16)
    chat = [
        *SAMPLE,
        *(
            (round(crowd.uniform(1.0, DURATION), 1), f"viewer{n % 23}", f"message {n}")
            for n in range(200)
        ),
    ]
    for stamp, name, text in sorted(chat):
        await channels.publish(STREAM, {"name": name, "text": text}, timestamp=stamp)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Start the channels with the server and seed the recording's chat."""
    async with channels:
        await seed_the_chat()
        yield


def page_config() -> str:
    """What the page needs to know, as a JSON object for its script."""
    return json.dumps(
        {
            "baseUrl": "/channel",
            "channel": STREAM,
            "duration": DURATION,
            "video": "/video" if VIDEO else None,
        }
    )


async def index(request: Request) -> HTMLResponse:
    """Serve the player page."""
    html = (HERE / "index.html").read_text().replace("__VOD_CONFIG__", page_config())
    return HTMLResponse(html)


async def script(request: Request) -> Response:
    """Serve the page's script."""
    return FileResponse(HERE / "script.js", media_type="text/javascript")


async def video(request: Request) -> Response:
    """Serve the recording (``VOD_VIDEO``), with range requests for seeking."""
    if VIDEO is None:
        return Response("No video file: set VOD_VIDEO", status_code=404)
    return FileResponse(VIDEO)


app = Starlette(
    routes=[
        Route("/", index),
        Route("/script.js", script),
        Route("/video", video),
        Mount("/channel", app=channels),
    ],
    lifespan=lifespan,
)
