"""One WebSocket of several channels: ``{prefix}/ws?channel=a&channel=b`` (SPEC 6.5)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from channel_asgi import ChannelApp
from channel_asgi.cursors import Cursors

from .helpers import WAIT, FakeClock, publish, ticking
from .test_keepalive import on_hypercorn
from .test_streams import change, chat, make_app, settled
from .test_websocket import recv_json, ws_url

__all__ = ["make_app"]  # the fixture, shared with test_streams

SECRET = "ws-streams-secret-0123456789abcdef"


class Socket:
    """An open socket of several channels: its frames, the inits by channel, a cursor each."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.inits: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.cursors = Cursors()  # composed from each channel's last id, as a client does
        self.pending: list[dict[str, Any]] = []

    async def read_inits(self, count: int) -> None:
        while len(self.inits) < count:
            frame = await self._read()
            if frame["type"] != "init":
                self.pending.append(frame)

    async def next(self) -> dict[str, Any]:
        if self.pending:
            return self.pending.pop(0)
        return await self._read()

    async def _read(self) -> dict[str, Any]:
        frame = await recv_json(self.ws)
        if frame["type"] == "init":
            self.inits[frame["stream_id"]] = frame
            self.order.append(frame["stream_id"])
        elif "id" in frame and "stream_id" in frame:
            self.cursors.advance(frame["stream_id"], frame["id"])
        return frame

    async def until(self, type_: str, channel: str | None = None) -> dict[str, Any]:
        for _ in range(1000):
            frame = await self.next()
            if frame["type"] == type_ and (channel is None or frame.get("stream_id") == channel):
                return frame
        raise AssertionError(f"no {type_} frame")  # pragma: no cover

    async def send(self, **frame: Any) -> dict[str, Any]:
        """Send a frame; return its reply (the ack or error), keeping the events read meanwhile."""
        await self.ws.send(json.dumps(frame))
        for _ in range(1000):
            reply = await self._read()
            if reply["type"] in ("ack", "error"):
                return reply
            self.pending.append(reply)
        raise AssertionError("no reply")  # pragma: no cover


def query_of(channels: tuple[str, ...], **extra: str) -> str:
    pairs = [f"channel={quote(channel, safe='')}" for channel in channels]
    pairs += [f"{key}={quote(value, safe='')}" for key, value in extra.items()]
    return "?" + "&".join(pairs)


@asynccontextmanager
async def socket_of(
    base: str, *channels: str, headers: dict[str, str] | None = None, **extra: str
) -> AsyncIterator[Socket]:
    """Open ``/ws?channel=...`` and read one init per channel."""
    url = ws_url(base, "/ws" + query_of(channels, **extra))
    async with websockets.connect(url, additional_headers=headers, open_timeout=WAIT) as ws:
        socket = Socket(ws)
        await socket.read_inits(len(channels))
        assert socket.order == list(channels)
        yield socket


async def test_one_socket_carries_every_channel_and_publishes_to_each(serve, make_app) -> None:
    """One init per channel in order, one user; a frame publishes to the channel it names."""
    channels = make_app()
    base = await serve(channels)
    async with socket_of(base, "a", "b", "c") as socket:
        users = {init["message"]["user_id"] for init in socket.inits.values()}
        assert len(users) == 1
        assert [init["message"]["viewer_count"] for init in socket.inits.values()] == [1, 1, 1]
        for channel in ("c", "a"):
            ack = await socket.send(type="broadcast", message=channel, stream_id=channel, ref=1)
            assert (ack["type"], ack["code"], ack["ref"]) == ("ack", 200, 1), ack
            event = await socket.until("broadcast")
            assert (event["stream_id"], event["message"], event["id"]) == (
                channel,
                channel,
                ack["id"],
            )
        await channels.publish("b", "from the server")
        event = await socket.until("broadcast")
        assert (event["stream_id"], event["message"]) == ("b", "from the server")
    await settled(channels, "a", "b", "c")


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ({"type": "broadcast", "message": "x"}, 400, 'Name the channel in "stream_id"'),
        ({"type": "broadcast", "message": "x", "stream_id": 7}, 400, "must be a channel name"),
        ({"type": "broadcast", "message": "x", "stream_id": "z"}, 403, "not one of this stream"),
        ({"type": "shout", "stream_id": "a"}, 400, "Invalid value 'shout'"),
    ],
)
async def test_a_frame_must_name_one_of_the_sockets_channels(
    serve, frame: dict[str, Any], code: int, words: str
) -> None:
    """A refused frame gets an error reply (echoing its ref); the socket goes on."""
    base = await serve(ChannelApp(secret=SECRET))
    async with socket_of(base, "a", "b") as socket:
        reply = await socket.send(**frame, ref="r")
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", code, "r"), reply
        assert words in reply["message"], reply
        ack = await socket.send(type="broadcast", message="ok", stream_id="b")
        assert ack["code"] == 200


async def ws_refusal(base: str, query: str, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(ws_url(base, "/ws" + query), open_timeout=WAIT, **kwargs):
            pass  # pragma: no cover
    response = refused.value.response
    body = json.loads(response.body)
    assert body["code"] == response.status_code
    return response.status_code, body["message"]


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("", 400, "Name the channels"),
        ("?channel=a&channel=a%20b", 400, "'a b'"),
        ("?channel=a&channel=a", 400, "named twice"),
        ("?channel=a&channel=b&channel=c&channel=d", 400, "at most 3 per connection"),
        ("?channel=ok&channel=closed", 404, "'closed' is closed"),
        ("?channel=ok&channel=members/1&channel=closed", 401, "Sign in"),
        ("?channel=ok&channel=secret/1", 403, "Not allowed"),
    ],
)
async def test_a_refused_channel_refuses_the_upgrade(
    serve, query: str, status: int, words: str
) -> None:
    """The first refused channel, in order, is the HTTP reply to the handshake."""
    channels = ChannelApp(max_channels_per_connection=3)
    channels.channel("members/{id}", anonymous_subscribe=False)
    channels.channel("secret/{id}", authorize=lambda user, action, params: False)
    await channels.close_channel("closed")
    base = await serve(channels)
    code, message = await ws_refusal(base, query)
    assert (code, words in message) == (status, True), message
    assert await channels.viewer_count("ok") == 0


async def test_a_ban_or_a_foreign_origin_refuses_the_upgrade(serve, make_app) -> None:
    """A banned user is 403 for the socket; so is a page of an origin not allowed."""
    channels = make_app()
    base = await serve(channels)
    await channels.ban("b", "mallory")
    token = channels.issue_token("mallory")
    code, message = await ws_refusal(base, f"?channel=a&channel=b&token={token}")
    assert (code, message) == (403, "You are banned from this channel")
    headers = {"origin": "https://elsewhere.example"}
    code, message = await ws_refusal(base, "?channel=a", additional_headers=headers)
    assert (code, message) == (403, "Origin https://elsewhere.example is not allowed")
    assert await channels.viewer_count("a") == 0


async def test_a_resume_names_a_cursor_per_channel(serve, make_app) -> None:
    """?last_event_id=a=<id>,b=<id> replays what each channel missed, once, and says so."""
    channels = make_app()
    base = await serve(channels)
    async with socket_of(base, "a", "b", "quiet") as first:
        for channel in ("a", "b"):
            await channels.publish(channel, f"{channel}1")
            await first.until("broadcast", channel)
        cursor = first.cursors.value()
    await settled(channels, "a", "b", "quiet")
    await channels.publish("a", "a2")
    await channels.publish("b", "b2")
    await channels.publish("b", "b3")
    await channels.publish("quiet", "no cursor: not replayed")
    async with socket_of(base, "a", "b", "quiet", last_event_id=cursor) as second:
        assert second.inits["a"]["message"]["recovered"] is True
        assert second.inits["b"]["message"]["recovered"] is True
        assert "recovered" not in second.inits["quiet"]["message"]
        await channels.publish("a", "live")
        seen: dict[str, list[str]] = {"a": [], "b": []}
        while len(seen["a"]) < 2 or len(seen["b"]) < 2:
            event = await second.until("broadcast")
            seen[event["stream_id"]].append(event["message"])
        assert seen == {"a": ["a2", "live"], "b": ["b2", "b3"]}
    await settled(channels, "a", "b", "quiet")


async def test_closing_banning_or_disconnecting_one_channel_ends_only_it(serve, make_app) -> None:
    """Each ends with its end frame; the socket goes on, and closes 1000 after the last."""
    channels = make_app()
    base = await serve(channels)
    token = channels.issue_token("mallory")
    headers = {"authorization": f"Bearer {token}"}
    async with socket_of(base, "a", "b", "c", "d", headers=headers) as socket:
        await channels.close_channel("a")
        end = await socket.until("end")
        assert (end["stream_id"], end["message"]) == ("a", {"status": "closed"})
        await channels.ban("b", "mallory")
        end = await socket.until("end")
        assert (end["stream_id"], end["message"]) == ("b", {"status": "banned"})
        assert await channels.disconnect("c", "mallory") == 1
        end = await socket.until("end")
        assert (end["stream_id"], end["message"]) == ("c", {"status": "disconnected"})
        reply = await socket.send(type="broadcast", message="x", stream_id="a")
        assert reply["code"] == 403  # a channel that ended is no longer the socket's
        await channels.publish("d", "d goes on")
        assert (await socket.until("broadcast"))["message"] == "d goes on"
        assert await channels.presence("d") == {"mallory": 1}
        await channels.close_channel("d")
        assert (await socket.until("end"))["stream_id"] == "d"
        with pytest.raises(websockets.exceptions.ConnectionClosedOK) as closed:
            await socket.next()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


async def test_presence_counts_the_socket_once_per_channel(serve, make_app) -> None:
    """viewer_count and presence see one connection on each channel, and it leaves each."""
    channels = make_app()
    base = await serve(channels)
    async with socket_of(base, "a", "b") as socket:
        user = socket.inits["a"]["message"]["user_id"]
        assert await channels.viewer_count("a") == 1
        assert await channels.presence("b") == {user: 1}
    await settled(channels, "a", "b")


async def test_a_request_frame_replies_with_its_channels_history(serve, make_app) -> None:
    """{"type": "request", "stream_id": "b"} sends b's history before its ack."""
    channels = make_app()
    base = await serve(channels)
    await channels.publish("a", "old a")
    await channels.publish("b", "old b")
    async with socket_of(base, "a", "b") as socket:
        await socket.ws.send(json.dumps({"type": "request", "stream_id": "b", "ref": 2}))
        history = await recv_json(socket.ws)
        assert (history["type"], history["stream_id"]) == ("request", "b")
        assert [item["message"] for item in history["message"]] == ["old b"]
        ack = await recv_json(socket.ws)
        assert (ack["type"], ack["ref"]) == ("ack", 2)
    await settled(channels, "a", "b")


async def test_a_live_socket_adds_and_removes_channels(
    serve, client: httpx.AsyncClient, make_app
) -> None:
    """POST /subscribe with any of its channels' tokens: an init follows, or an end."""
    channels = make_app()
    base = await serve(channels)
    async with socket_of(base, "a", "b") as socket:
        reply = await change(client, base, socket.inits["b"]["message"]["token"], add=["c"])
        assert reply.status_code == 202, reply.text
        init = await socket.until("init")
        assert init["stream_id"] == "c"
        ack = await socket.send(type="broadcast", message="to c", stream_id="c")
        assert ack["code"] == 200
        assert (await socket.until("broadcast", "c"))["message"] == "to c"
        reply = await change(client, base, socket.inits["c"]["message"]["token"], remove=["a"])
        assert reply.status_code == 202, reply.text
        end = await socket.until("end")
        assert (end["stream_id"], end["message"]) == ("a", {"status": "removed"})
        await channels.publish("a", "not any more")
        await channels.publish("b", "b1")
        event = await socket.until("broadcast")
        assert (event["stream_id"], event["message"]) == ("b", "b1")
        assert await channels.viewer_count("a") == 0
    await settled(channels, "b", "c")


async def test_private_messages_reach_the_socket_on_their_channel(serve, client) -> None:
    """A private message to the socket's user, on one of its channels, names that channel."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with socket_of(base, "a", "b") as socket:
        user = socket.inits["a"]["message"]["user_id"]
        async with socket_of(base, "b") as other:
            private = {"type": "private", "message": "psst", "to_user_id": user}
            reply = await publish(
                client, f"{base}/publish/b", other.inits["b"]["message"]["token"], private
            )
            assert reply.status_code == 200, reply.text
        event = await socket.until("private")
        assert (event["stream_id"], event["message"]) == ("b", "psst")
        ack = await socket.send(**chat("hi"), stream_id="a")
        assert ack["code"] == 200


async def test_an_idle_socket_of_several_channels_gets_one_ping_per_heartbeat(
    clock: FakeClock,
) -> None:
    """On a server that never pings, the socket (not each channel) gets ``{"type":"ping"}``."""
    channels = ChannelApp(secret=SECRET)
    async with on_hypercorn(channels) as base, socket_of(base, "a", "b", "c") as socket:
        started = clock.monotonic()
        async with ticking(clock, 1.0):
            assert await socket.next() == {"type": "ping"}
            first = clock.monotonic()
            assert await socket.next() == {"type": "ping"}
            second = clock.monotonic()
        assert 15.0 <= first - started < 30.0
        assert 15.0 <= second - first < 30.0


async def test_shutdown_closes_the_socket_1001_and_it_leaves_every_channel(serve) -> None:
    """``channels.shutdown()`` closes a socket of several channels as it closes any other."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with socket_of(base, "a", "b") as socket:
        channels.shutdown()
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            for _ in range(100):
                await socket.next()
        assert socket.ws.close_code == 1001
    await settled(channels, "a", "b")
