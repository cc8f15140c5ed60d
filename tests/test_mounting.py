"""Where the app runs: at root, mounted under a prefix, around a host, and its lifecycle."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import anyio
import httpx
import pytest
import websockets
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from channel_asgi import ChannelApp, ChannelMiddleware

from .helpers import WAIT, FakeClock, publish, subscribe, ticking


async def roundtrip(client: httpx.AsyncClient, base: str, channel: str = "15") -> None:
    """Subscribe, publish with the init token, and see the broadcast come back."""
    async with subscribe(client, f"{base}/subscribe/{channel}") as sub:
        body = {"type": "broadcast", "message": {"ok": True}}
        reply = await publish(client, f"{base}/publish/{channel}", sub.token, body)
        assert reply.status_code == 200, reply.text
        assert (await sub.stream.until("broadcast")).json["message"] == {"ok": True}


async def test_served_at_root(serve, client: httpx.AsyncClient) -> None:
    """The app is a complete ASGI application on its own."""
    await roundtrip(client, await serve(ChannelApp()))


async def test_mounted_in_starlette(serve, client: httpx.AsyncClient) -> None:
    """Starlette's Mount serves the routes under the prefix; other routes keep working."""
    channels = ChannelApp()
    host = Starlette(
        routes=[
            Route("/", lambda request: PlainTextResponse("home")),
            Mount("/channel", app=channels),
        ]
    )
    base = await serve(host)
    await roundtrip(client, f"{base}/channel")
    assert (await client.get(f"{base}/")).text == "home"
    assert (await client.get(f"{base}/subscribe/1")).status_code == 404


async def test_mounted_in_fastapi(serve, client: httpx.AsyncClient) -> None:
    """FastAPI's app.mount works the same, and a view can emit with channels.publish."""
    channels = ChannelApp()
    api = FastAPI()

    @api.post("/emit")
    async def emit() -> dict[str, Any]:
        return {"id": await channels.publish("15", {"from": "view"})}

    api.mount("/channel", channels)
    base = await serve(api)
    async with subscribe(client, f"{base}/channel/subscribe/15") as sub:
        emitted = (await client.post(f"{base}/emit")).json()["id"]
        event = await sub.stream.until("broadcast")
        assert event.id == emitted
        assert event.json["author_id"] == "0"


def strip_prefix(app: Any, prefix: str) -> Any:
    """Mount the way Starlette before 0.33 did: path stripped, prefix in root_path."""

    async def mounted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(prefix):
            scope = dict(scope, path=scope["path"][len(prefix) :] or "/", root_path=prefix)
        await app(scope, receive, send)

    return mounted


async def test_mounted_with_a_stripped_path_and_root_path(serve, client: httpx.AsyncClient) -> None:
    """Older mounts strip the prefix from path; the routes still resolve."""
    base = await serve(strip_prefix(ChannelApp(), "/channel"))
    await roundtrip(client, f"{base}/channel")


async def test_served_behind_uvicorn_root_path(serve, client: httpx.AsyncClient) -> None:
    """Behind a proxy that strips /rt, uvicorn --root-path adds it back to path and root_path."""
    base = await serve(ChannelApp(), root_path="/rt")
    await roundtrip(client, base)


@contextlib.asynccontextmanager
async def host_lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.started = True
    yield


async def host_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


async def test_middleware_keeps_the_host_routes_websockets_and_lifespan(
    serve, client: httpx.AsyncClient
) -> None:
    """Only the prefix goes to channels; the host keeps http, websocket and lifespan."""
    host = Starlette(
        routes=[
            Route("/", lambda request: PlainTextResponse(str(request.app.state.started))),
            Route("/channelx", lambda request: PlainTextResponse("host")),
            WebSocketRoute("/echo", host_echo),
        ],
        lifespan=host_lifespan,
    )
    base = await serve(ChannelMiddleware(host, ChannelApp(), prefix="/channel"), lifespan="on")
    await roundtrip(client, f"{base}/channel")
    assert (await client.get(f"{base}/")).text == "True"
    assert (await client.get(f"{base}/channelx")).text == "host"
    async with websockets.connect(base.replace("http", "ws") + "/echo") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"


@pytest.mark.parametrize("prefix", ["", "channel", "/channel/"])
def test_middleware_refuses_a_malformed_prefix(prefix: str) -> None:
    """The prefix starts with '/' and has no trailing '/'."""
    with pytest.raises(ValueError, match="prefix"):
        ChannelMiddleware(Starlette(), ChannelApp(), prefix=prefix)


async def test_lifespan_starts_and_stops_the_app_when_top_level(
    serve, client: httpx.AsyncClient
) -> None:
    """Served with lifespan on, the app starts before the first request."""
    channels = ChannelApp()
    base = await serve(channels, lifespan="on")
    assert channels.running
    await roundtrip(client, base)


async def test_lifespan_protocol_messages(anyio_backend: str) -> None:
    """startup.complete then shutdown.complete, driven message by message."""
    channels = ChannelApp()
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[MutableMapping[str, Any]] = []
    running: list[bool] = []

    async def receive() -> dict[str, Any]:
        if sent:
            running.append(channels.running)
        return inbox.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(WAIT):
        await channels({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert running == [True]
    assert not channels.running


async def test_async_with_starts_and_stops(anyio_backend: str) -> None:
    """`async with channels:` runs the background work for its block only."""
    channels = ChannelApp()
    async with channels:
        assert channels.running
        async with channels.subscribe("x") as events:
            await channels.publish("x", "hello")
            with anyio.fail_after(WAIT):
                event = await events.__anext__()
            assert event.message == "hello"
    assert not channels.running


async def test_starts_on_first_use_without_lifespan(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Mounted apps get no lifespan; the first request starts the background work."""
    channels = ChannelApp(heartbeat=15.0)
    host = Starlette(routes=[Mount("/channel", app=channels)])
    base = await serve(host, lifespan="on")
    assert not channels.running
    async with subscribe(client, f"{base}/channel/subscribe/x") as sub:
        assert channels.running
        with anyio.fail_after(WAIT):
            async with ticking(clock, 5.0):
                while "ping" not in sub.stream.comments:
                    await sub.stream.next(comments=True)


async def test_websocket_outside_the_ws_route_is_refused_with_json(serve) -> None:
    """A WebSocket to a path other than /ws/{channel} gets a JSON 404 before the upgrade."""
    base = await serve(ChannelApp())
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(base.replace("http", "ws") + "/subscribe/1"):
            pass  # pragma: no cover
    response = refused.value.response
    assert response.status_code == 404
    assert json.loads(bytes(response.body or b""))["code"] == 404
