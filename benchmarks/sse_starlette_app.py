"""The usual Python stack for the same job, for comparison: sse-starlette + broadcaster.

GET /subscribe/{channel} streams every message published to the channel as an SSE ``data:``
line; POST /publish/{channel} publishes its body as is (no token, no validation, no history).
Run: ``uvicorn benchmarks.sse_starlette_app:app``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from broadcaster import Broadcast
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

broadcast = Broadcast("memory://")


async def subscribe(request: Request) -> EventSourceResponse:
    channel = request.path_params["channel"]

    async def events() -> AsyncIterator[dict[str, str]]:
        async with broadcast.subscribe(channel) as subscriber:
            async for event in subscriber:  # type: ignore[union-attr]
                yield {"data": event.message}

    return EventSourceResponse(events())


async def publish(request: Request) -> JSONResponse:
    body = await request.body()
    await broadcast.publish(request.path_params["channel"], body.decode())
    return JSONResponse({"code": 200, "message": "Message broadcast"})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await broadcast.connect()
    try:
        yield
    finally:
        await broadcast.disconnect()


app = Starlette(
    routes=[
        Route("/subscribe/{channel:path}", subscribe),
        Route("/publish/{channel:path}", publish, methods=["POST"]),
    ],
    lifespan=lifespan,
)
