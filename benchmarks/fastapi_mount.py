"""The README's first example, for the benchmark: a FastAPI app with the channels mounted.

Mounted at the root so that the load client's paths (``/subscribe/bench``, ``/publish/bench``)
are the same as the bare app's; every request still goes through FastAPI's middleware and
router, as under ``/channel``.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from channel_asgi import ChannelApp

channels = ChannelApp(
    secret=os.environ["CHANNEL_ASGI_SECRET"],
    max_connections_per_ip=None,  # every load client connects from 127.0.0.1
)
app = FastAPI()
app.mount("/", channels)
