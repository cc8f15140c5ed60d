"""Issue 19: keeping idle WebSockets alive from the app, and ending every stream on a stop.

Hypercorn sends no WebSocket pings, so it runs the app here, in this event loop
(``hypercorn.asyncio.serve``) on the test's clock: the keepalive frames come when the clock says
so. ``channels.shutdown()`` runs under uvicorn, as a server's own stop hook would call it.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import websockets
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from channel_asgi import ChannelApp
from channel_asgi.client import Client
from channel_asgi.protocol import WS_PING

from .helpers import WAIT, EventStream, FakeClock, eventually, free_port, subscribe, ticking
from .test_websocket import recv_json, ws_subscribe, ws_url

SECRET = "k" * 40


def accepts(port: int) -> bool:
    """Whether 127.0.0.1:``port`` accepts connections."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


async def ended_cleanly(stream: EventStream) -> bool:
    """Read until the response ends; True if it completed (not cut by a network error)."""
    try:
        while True:
            await stream.next()
    except EOFError:
        return True
    except (httpx.ReadError, httpx.RemoteProtocolError):
        return False


@asynccontextmanager
async def on_hypercorn(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with hypercorn in this event loop (lifespan included); yield its base URL."""
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = config.errorlog = None
    stop = asyncio.Event()
    server = asyncio.ensure_future(hypercorn_serve(app, config, shutdown_trigger=stop.wait))
    try:
        await eventually(lambda: server.done() or accepts(port))
        assert not server.done(), server.exception()
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        with anyio.fail_after(WAIT):
            await server


async def test_an_idle_websocket_gets_a_ping_frame_each_heartbeat_and_stays_open(
    clock: FakeClock,
) -> None:
    """On a server that never pings, ``{"type":"ping"}`` comes after ``heartbeat`` (15 s) idle."""
    channels = ChannelApp(secret=SECRET)
    async with on_hypercorn(channels) as base, ws_subscribe(base, "idle") as (ws, _):
        started = clock.monotonic()
        async with ticking(clock, 1.0):
            assert await recv_json(ws) == {"type": "ping"}
            first = clock.monotonic()
            assert await recv_json(ws) == {"type": "ping"}
            second = clock.monotonic()
        # Never sooner than a heartbeat of silence, never as late as two (docs/protocol.md).
        assert 15.0 <= first - started < 30.0
        assert 15.0 <= second - first < 30.0
        await ws.send(json.dumps({"type": "broadcast", "message": "still here", "ref": 1}))
        frames = [await recv_json(ws), await recv_json(ws)]
        assert {frame["type"] for frame in frames} == {"broadcast", "ack"}


async def test_a_busy_websocket_gets_no_ping_frame(clock: FakeClock) -> None:
    """Only idle sockets are pinged: one event per tick keeps the pings away."""
    channels = ChannelApp(secret=SECRET)
    async with on_hypercorn(channels) as base, ws_subscribe(base, "busy") as (ws, _):
        for n in range(30):  # 30 s of the clock, twice the heartbeat
            clock.advance(1.0)
            await channels.publish("busy", n)
            frame = await recv_json(ws)
            assert (frame["type"], frame["message"]) == ("broadcast", n)


async def ping_then_broadcast(scope: Any, receive: Any, send: Any) -> None:
    """A WebSocket server that sends init, two keepalive frames, then one broadcast."""
    assert scope["type"] == "websocket"
    await receive()
    await send({"type": "websocket.accept"})
    init = {"type": "init", "stream_id": "c", "message": {"user_id": "u", "token": "t"}}
    broadcast = {"type": "broadcast", "id": "1-0", "stream_id": "c", "message": "after"}
    for frame in (init, None, None, broadcast):
        text = WS_PING if frame is None else json.dumps(frame)
        await send({"type": "websocket.send", "text": text})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_the_python_client_never_yields_a_ping_frame(serve: Any) -> None:
    """The keepalive frame is skipped: the first event the client yields is the broadcast."""
    base = await serve(ping_then_broadcast)
    async with Client(base, transport="ws") as client, client.subscribe("c") as sub:
        with anyio.fail_after(WAIT):
            event = await anext(aiter(sub))
    assert (event.type, event.message) == ("broadcast", "after")


async def test_shutdown_ends_every_stream_and_each_one_opened_after(
    serve: Any, client: httpx.AsyncClient
) -> None:
    """``channels.shutdown()``: SSE completes, WebSockets close 1001, presence drops to 0."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with (
        subscribe(client, f"{base}/subscribe/room") as sse,
        websockets.connect(ws_url(base, "/ws/room"), open_timeout=WAIT) as ws,
    ):
        assert (await recv_json(ws))["type"] == "init"
        assert await channels.viewer_count("room") == 2
        channels.shutdown()
        assert await ended_cleanly(sse.stream)
        with anyio.fail_after(WAIT):
            try:
                while True:
                    await ws.recv()
            except websockets.exceptions.ConnectionClosed:
                pass
        assert ws.close_code == 1001
        await eventually(lambda: channels.viewer_count("room"), lambda n: n == 0)
    # The app is stopping: a stream that opens now is ended too (by the next exit check).
    async with subscribe(client, f"{base}/subscribe/room") as late:
        assert await ended_cleanly(late.stream)
    assert await channels.publish("room", "publishing still works")
