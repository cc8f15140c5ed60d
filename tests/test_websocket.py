"""{prefix}/ws/{channel}: init, events and publishing over one WebSocket, as SSE does it."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from channel_asgi import ChannelApp, Request

from .helpers import WAIT, publish, subscribe

SECRET = "w" * 40


def ws_url(base: str, path: str) -> str:
    return "ws" + base[len("http") :] + path


@asynccontextmanager
async def ws_subscribe(
    base: str, channel: str, query: str = ""
) -> AsyncIterator[tuple[ClientConnection, dict[str, Any]]]:
    """Open the WebSocket route and read its init frame."""
    async with websockets.connect(ws_url(base, f"/ws/{channel}{query}"), open_timeout=WAIT) as ws:
        init = json.loads(await recv(ws))
        assert init["type"] == "init", init
        yield ws, init


async def recv(ws: ClientConnection) -> str:
    with anyio.fail_after(WAIT):
        frame = await ws.recv()
    assert isinstance(frame, str)
    return frame


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    return dict(json.loads(await recv(ws)))


async def test_init_is_the_first_frame_and_counts_the_viewer(
    serve, client: httpx.AsyncClient
) -> None:
    """init carries user_id, token and viewer_count; SSE viewers see the WebSocket join."""
    base = await serve(ChannelApp(secret=SECRET))
    async with (
        subscribe(client, f"{base}/subscribe/room") as sse,
        ws_subscribe(base, "room") as (_, init),
    ):
        message = init["message"]
        assert set(message) == {"user_id", "token", "viewer_count"}
        assert message["viewer_count"] == 2
        join = (await sse.stream.until("system")).json["message"]
        assert (join["status"], join["user_id"]) == ("join", message["user_id"])


async def test_frames_publish_and_get_one_ack_each_echoing_ref(serve) -> None:
    """A broadcast frame reaches the sender too, and its ack carries the id and the ref."""
    base = await serve(ChannelApp(secret=SECRET))
    async with ws_subscribe(base, "room") as (ws, init):
        await ws.send(json.dumps({"type": "broadcast", "message": {"t": "hi"}, "ref": "a1"}))
        event, ack = await recv_json(ws), await recv_json(ws)
        assert ack == {
            "type": "ack",
            "code": 200,
            "message": ack["message"],
            "id": event["id"],
            "ref": "a1",
        }
        assert (event["type"], event["author_id"], event["message"]) == (
            "broadcast",
            init["message"]["user_id"],
            {"t": "hi"},
        )
        await ws.send(json.dumps({"type": "private", "message": 1, "to_user_id": "x"}))
        private, ack = await recv_json(ws), await recv_json(ws)
        assert private["type"] == "private"
        assert ack["type"] == "ack" and "id" not in ack and "ref" not in ack


@pytest.mark.parametrize(
    ("frame", "code", "ref"),
    [
        ("not json", 400, None),
        ("[1, 2]", 400, None),
        ('{"type": "nope", "ref": 3}', 400, 3),
        ('{"type": "broadcast", "ref": {"k": [1]}}', 400, {"k": [1]}),
        ('{"type": "broadcast", "message": 1, "widget_key": "bad", "ref": 5}', 403, 5),
        ('{"type": "broadcast", "message": "' + "x" * 70000 + '", "ref": 6}', 413, None),
    ],
)
async def test_refused_frames_get_an_error_frame(serve, frame: str, code: int, ref: object) -> None:
    """Errors name the problem; no ref is echoed from a frame not parsed (not JSON, too big)."""
    base = await serve(ChannelApp(secret=SECRET, widget_keys={"good"}))
    async with ws_subscribe(base, "room") as (ws, _):
        await ws.send(frame)
        error = await recv_json(ws)
        assert (error["type"], error["code"]) == ("error", code)
        assert error.get("ref") == ref
        assert error["message"]


async def test_binary_frames_are_refused(serve) -> None:
    """Publish bodies are text frames."""
    base = await serve(ChannelApp(secret=SECRET))
    async with ws_subscribe(base, "room") as (ws, _):
        await ws.send(b'{"type": "broadcast", "message": 1}')
        assert (await recv_json(ws))["code"] == 400


async def test_request_sends_the_history_then_its_ack(serve) -> None:
    """The request's events come before its ack, whatever the storage."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    ids = [await channels.publish("h", n) for n in range(3)]
    async with ws_subscribe(base, "h") as (ws, _):
        await ws.send(json.dumps({"type": "request", "ref": 9}))
        history, ack = await recv_json(ws), await recv_json(ws)
        assert [item["id"] for item in history["message"]] == ids
        assert (history["type"], ack["type"], ack["ref"]) == ("request", "ack", 9)


async def test_resume_with_last_event_id(serve) -> None:
    """?last_event_id= replays what followed it, and init says recovered."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    ids = [await channels.publish("r", n) for n in range(4)]
    async with ws_subscribe(base, "r", f"?last_event_id={ids[1]}") as (ws, init):
        assert init["message"]["recovered"] is True
        assert [(await recv_json(ws))["id"] for _ in range(2)] == ids[2:]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ws/bad%20name", 400),
        ("/ws/", 400),
        ("/wsx/room", 404),
        ("/ws/closed", 404),
        ("/ws/members/1", 401),
        ("/ws/room?token=forged", 401),
    ],
)
async def test_refusals_before_the_upgrade_are_http_json(serve, path: str, status: int) -> None:
    """The same refusals as subscribe, as an HTTP JSON reply instead of an upgrade."""
    channels = ChannelApp(secret=SECRET)
    channels.channel("members/{id}", anonymous_subscribe=False)
    base = await serve(channels)
    await channels.close_channel("closed")
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(ws_url(base, path), open_timeout=WAIT):
            pass  # pragma: no cover
    response = refused.value.response
    assert response.status_code == status
    assert json.loads(bytes(response.body or b""))["code"] == status


async def test_identity_token_runs_the_socket_as_its_user(serve) -> None:
    """?token= with an identity token works as on subscribe."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with ws_subscribe(base, "room", f"?token={channels.issue_token('ann')}") as (_, init):
        assert init["message"]["user_id"] == "ann"


async def test_websocket_and_sse_subscribers_see_the_same_events_in_order(
    serve, client: httpx.AsyncClient
) -> None:
    """Publishes from HTTP, from a frame and from the server reach both transports alike."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with (
        subscribe(client, f"{base}/subscribe/same") as sse,
        ws_subscribe(base, "same") as (ws, _),
    ):
        await sse.stream.until("system")  # the WebSocket's join
        over_sse: list[tuple[str, object]] = []

        async def sse_until(message: object) -> None:
            while not over_sse or over_sse[-1][1] != message:
                event = (await sse.stream.next()).json
                over_sse.append((event["type"], event["message"]))

        await publish(
            client, f"{base}/publish/same", sse.token, {"type": "broadcast", "message": "http"}
        )
        await ws.send(json.dumps({"type": "broadcast", "message": "frame"}))
        await sse_until("frame")  # the frame is published before the server's next one
        await channels.publish("same", "server")
        await channels.close_channel("same")
        await sse_until({"status": "closed"})
        over_ws: list[tuple[str, object]] = []
        while not over_ws or over_ws[-1][0] != "end":
            frame = await recv_json(ws)
            if frame["type"] != "ack":
                over_ws.append((frame["type"], frame.get("message")))
        assert over_ws == over_sse
        assert [m for t, m in over_ws if t == "broadcast"] == ["http", "frame", "server"]
        with pytest.raises(websockets.exceptions.ConnectionClosedOK):
            await recv(ws)


async def test_a_websocket_that_stops_reading_is_closed_with_1008(serve) -> None:
    """Past max_buffer_bytes the server closes the socket with 1008; publishing is unaffected."""
    channels = ChannelApp(secret=SECRET, max_buffer_bytes=4096)
    base = await serve(channels)
    url = ws_url(base, "/ws/flood")
    async with websockets.connect(url, max_queue=1, open_timeout=WAIT) as ws:
        await recv(ws)  # init; from now on this client reads nothing
        with anyio.fail_after(WAIT):
            while await channels.viewer_count("flood"):
                await channels.publish("flood", "x" * 2000)
        assert ws.close_code is None or ws.close_code == 1008
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            with anyio.fail_after(WAIT):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser
        ("https://page.example", True),  # in cors_origins
        ("http://{host}", True),  # the server's own origin
        ("https://evil.example", False),
    ],
)
async def test_handshakes_from_other_origins_are_refused(
    serve, origin: str | None, allowed: bool
) -> None:
    """Cross-site WebSocket hijacking: a page of a foreign origin gets a 403 before the upgrade."""
    base = await serve(ChannelApp(secret=SECRET, cors_origins=["https://page.example"]))
    host = base.removeprefix("http://")
    headers = {} if origin is None else {"Origin": origin.format(host=host)}
    url = ws_url(base, "/ws/room")
    if allowed:
        async with websockets.connect(url, origin=None, additional_headers=headers) as ws:
            assert json.loads(await recv(ws))["type"] == "init"
        return
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(url, origin=None, additional_headers=headers):
            pass  # pragma: no cover
    assert refused.value.response.status_code == 403


class _CookieAuth:
    """Users are named by a 'user' cookie (the host's session, in a real app)."""

    async def identify(self, request: Request) -> str | None:
        return request.cookies.get("user")


@pytest.mark.parametrize(
    ("origin", "credentials", "user"),
    [
        ("https://evil.example", {"Cookie": "user=victim"}, None),
        ("null", {"Cookie": "user=victim"}, None),
        ("https://evil.example", {"Authorization": "Basic dmljdGltOnB3"}, None),
        ("https://evil.example", {}, "anonymous"),  # no credentials: `*` admits it
        ("null", {}, "anonymous"),
        ("https://page.example", {"Cookie": "user=victim"}, "victim"),  # listed by name
        ("http://{host}", {"Cookie": "user=victim"}, "victim"),  # the server's own origin
        (None, {"Cookie": "user=victim"}, "victim"),  # not a browser
    ],
)
async def test_wildcard_origins_never_admit_a_credentialed_cross_site_handshake(
    serve, origin: str | None, credentials: dict[str, str], user: str | None
) -> None:
    """With cors_origins=["*"], a foreign page's handshake carrying cookies is a 403 (issue 14)."""
    channels = ChannelApp(
        secret=SECRET, auth=_CookieAuth(), cors_origins=["*", "https://page.example"]
    )
    base = await serve(channels)
    host = base.removeprefix("http://")
    headers = dict(credentials)
    if origin is not None:
        headers["Origin"] = origin.format(host=host)
    url = ws_url(base, "/ws/room")
    if user is None:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(url, origin=None, additional_headers=headers):
                pass  # pragma: no cover
        response = refused.value.response
        assert response.status_code == 403
        assert "credentials" in json.loads(bytes(response.body or b""))["message"]
        assert await channels.viewer_count("room") == 0
        return
    async with websockets.connect(url, origin=None, additional_headers=headers) as ws:
        init = json.loads(await recv(ws))
        assert init["type"] == "init"
        if user == "anonymous":
            assert init["message"]["user_id"] != "victim"
        else:
            assert init["message"]["user_id"] == user


class _Records(logging.Handler):
    """Collect channel_asgi's log records; signal each one that names a WebSocket."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.websocket = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if record.getMessage().startswith("WebSocket"):
            self.websocket.set()


@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
async def test_a_client_leaving_mid_send_is_logged_at_debug_not_error(
    serve, caplog: pytest.LogCaptureFixture, ws: str
) -> None:
    """A WebSocket client that drops its TCP connection during a replay is no ERROR (issue 14)."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels, ws=ws)
    first = await channels.publish("leave", "x" * 20000)
    for _ in range(400):  # ~8 MB: more than the socket buffers hold, so the replay must wait
        await channels.publish("leave", "x" * 20000)
    records = _Records()
    logger = logging.getLogger("channel_asgi")
    logger.addHandler(records)
    caplog.set_level(logging.DEBUG, logger="channel_asgi")
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
        sock.setblocking(False)
        handshake = (
            f"GET /ws/leave?last_event_id={first} HTTP/1.1\r\nHost: {base[7:]}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        with anyio.fail_after(WAIT):
            await loop.sock_connect(sock, ("127.0.0.1", int(base.rsplit(":", 1)[1])))
            await loop.sock_sendall(sock, handshake.encode())
            received = b""
            while b"\r\n\r\n" not in received:
                received += await loop.sock_recv(sock, 4096)
            assert received.startswith(b"HTTP/1.1 101"), received
            # The server is writing the replay now, held by the client's window: reset it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            await records.websocket.wait()
    finally:
        sock.close()
        logger.removeHandler(records)
    loud = [r for r in records.records if r.levelno >= logging.WARNING]
    assert loud == [], [(r.levelname, r.getMessage()) for r in loud]
    [left] = [r for r in records.records if r.getMessage().startswith("WebSocket")]
    assert left.levelno == logging.DEBUG
    assert "left" in left.getMessage()


async def test_a_client_gone_before_the_accept_is_not_left_counted() -> None:
    """The accept fails (the client left after the checks): the join is undone."""
    channels = ChannelApp(secret=SECRET)
    messages = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "websocket.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "websocket.accept":
            raise OSError("gone")

    scope = {"type": "websocket", "path": "/ws/room", "headers": [], "query_string": b""}
    async with channels:
        await channels(scope, receive, send)  # logged as a client that left mid-send
        assert await channels.viewer_count("room") == 0
