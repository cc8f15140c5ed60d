"""Moderation on one server and on apps sharing one MemoryStorage: delete, ban, slow mode.

Apps sharing a ``MemoryStorage`` in one process stand for workers sharing a storage; the same
points on Redis, with two worker processes, are in ``test_moderation_workers.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from channel_asgi import ChannelApp
from channel_asgi.client import Client, Transport
from channel_asgi.storage import MemoryStorage

from .helpers import WAIT, FakeClock, Subscriber, eventually, publish, subscribe

SECRET = "m" * 40


def chat(text: str = "hi") -> dict[str, Any]:
    return {"type": "broadcast", "message": {"text": text}}


def ws_url(base: str, path: str) -> str:
    return "ws" + base[len("http") :] + path


@asynccontextmanager
async def ws_subscribe(
    base: str, channel: str, token: str | None = None
) -> AsyncIterator[tuple[ClientConnection, dict[str, Any]]]:
    """Open the WebSocket route (as the identity token's user, if given) and read its init."""
    query = "" if token is None else f"?token={token}"
    async with websockets.connect(ws_url(base, f"/ws/{channel}{query}"), open_timeout=WAIT) as ws:
        init = await recv_json(ws)
        assert init["type"] == "init", init
        yield ws, init


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    with anyio.fail_after(WAIT):
        frame = await ws.recv()
    return dict(json.loads(frame))


async def ws_close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes the socket; return the close code it sent."""
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        with anyio.fail_after(WAIT):
            while True:
                await ws.recv()
    received = closed.value.rcvd
    return None if received is None else received.code


async def ws_refusal(base: str, channel: str, token: str) -> int:
    """Open the WebSocket route and return the HTTP status it was refused with."""
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(
            ws_url(base, f"/ws/{channel}?token={token}"), open_timeout=WAIT
        ):
            pass
    return refused.value.response.status_code


async def rest_of(sub: Subscriber) -> list[dict[str, Any]]:
    """Read a stream until the server ends it; return the events it sent."""
    events: list[dict[str, Any]] = []
    with anyio.fail_after(WAIT), contextlib.suppress(EOFError):
        while True:
            events.append((await sub.stream.next()).json)
    return events


# -- delete_message ------------------------------------------------------------------------------


async def test_delete_message_tells_every_subscriber_and_hides_it_from_request_and_resume(
    serve, client: httpx.AsyncClient
) -> None:
    """SSE and WebSocket get the deleted event; request and resume skip the broadcast after."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    ids = [await channels.publish("live", {"n": n}) for n in range(3)]
    assert None not in ids
    async with (
        subscribe(client, f"{base}/subscribe/live") as sse,
        ws_subscribe(base, "live") as (ws, _),
    ):
        assert await channels.delete_message("live", str(ids[1])) is True
        event = (await sse.stream.until("system")).json
        while event["message"].get("status") != "deleted":  # the WebSocket's join came first
            event = (await sse.stream.until("system")).json
        assert "id" not in event  # only broadcasts carry an event id
        assert (event["message"], event["stream_id"]) == (
            {"status": "deleted", "id": ids[1]},
            "live",
        )
        frame = await recv_json(ws)
        assert (frame["type"], frame["message"]) == ("system", {"status": "deleted", "id": ids[1]})

        reply = await publish(client, f"{base}/publish/live", sse.token, {"type": "request"})
        assert reply.status_code == 200, reply.text
        history = (await sse.stream.until("request")).json["message"]
        assert [item["id"] for item in history] == [ids[0], ids[2]]
    async with subscribe(client, f"{base}/subscribe/live", {"Last-Event-ID": ids[0]}) as resumed:
        assert resumed.init["message"]["recovered"] is True
        assert (await resumed.stream.next()).id == ids[2]
    assert await channels.delete_message("live", str(ids[1])) is False  # deleted already


@pytest.mark.parametrize("event_id", ["999-0", "nonsense", ""])
async def test_delete_message_of_an_id_the_channel_does_not_hold_is_false_and_silent(
    event_id: str,
) -> None:
    """Unknown ids are False, and no deleted event goes out."""
    async with ChannelApp(secret=SECRET) as channels:
        await channels.publish("live", "kept")
        async with channels.subscribe("live") as events:
            assert await channels.delete_message("live", event_id) is False
            marker = await channels.publish("live", "next")
            with anyio.fail_after(WAIT):  # a deleted event would have come first
                first = await anext(events)
            assert (first.type, first.id) == ("broadcast", marker)


async def test_delete_message_on_one_app_reaches_another_sharing_the_storage(
    serve, client: httpx.AsyncClient
) -> None:
    """Deleted on A: B's subscriber is told, and a resume through B never returns it."""
    storage = MemoryStorage()
    a = ChannelApp(storage=storage, secret=SECRET)
    b = ChannelApp(storage=storage, secret=SECRET)
    await serve(a)
    base_b = await serve(b)
    first, doomed, last = [await a.publish("vod", n) for n in range(3)]
    async with subscribe(client, f"{base_b}/subscribe/vod") as on_b:
        assert await a.delete_message("vod", str(doomed)) is True
        deleted = (await on_b.stream.until("system")).json["message"]
        assert deleted == {"status": "deleted", "id": doomed}
    async with subscribe(client, f"{base_b}/subscribe/vod", {"Last-Event-ID": first}) as resumed:
        assert (await resumed.stream.next()).id == last


# -- bans ----------------------------------------------------------------------------------------


async def test_a_ban_ends_only_that_users_connections_with_the_banned_end_event(
    serve, client: httpx.AsyncClient
) -> None:
    """Mallory's SSE and WebSocket end (end banned, then close 1000); Alice stays connected."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    mallory = channels.issue_token("mallory")
    async with (
        subscribe(client, f"{base}/subscribe/chat?token={mallory}") as sse,
        ws_subscribe(base, "chat", mallory) as (ws, _),
        subscribe(client, f"{base}/subscribe/chat?token={channels.issue_token('alice')}") as alice,
    ):
        await channels.ban("chat", "mallory")
        ended = [e for e in await rest_of(sse) if e["type"] == "end"]
        assert [(e["message"], e["stream_id"]) for e in ended] == [({"status": "banned"}, "chat")]
        frame = await recv_json(ws)
        while frame["type"] != "end":  # joins of the later connections
            frame = await recv_json(ws)
        assert frame["message"] == {"status": "banned"}
        assert await ws_close_code(ws) == 1000

        event_id = await channels.publish("chat", "still here?")
        assert (await alice.stream.until("broadcast")).id == event_id


async def test_a_banned_user_is_403_on_subscribe_websocket_and_publish_until_unbanned(
    serve, client: httpx.AsyncClient
) -> None:
    """Nothing the banned user sends is stored or delivered; unban lets them back."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    mallory = channels.issue_token("mallory")
    url = f"{base}/publish/chat"
    async with subscribe(client, f"{base}/subscribe/chat") as watcher:
        async with subscribe(client, f"{base}/subscribe/chat?token={mallory}") as banned:
            publish_token = banned.token
            await channels.ban("chat", "mallory")
        refused = await publish(client, url, publish_token, chat("spam"))
        assert (refused.status_code, refused.json()) == (
            403,
            {"code": 403, "message": "You are banned from this channel"},
        )
        refused = await client.get(f"{base}/subscribe/chat?token={mallory}")
        assert refused.status_code == 403
        assert await ws_refusal(base, "chat", mallory) == 403
        history = await publish(client, url, watcher.token, {"type": "request"})
        assert history.status_code == 200
        assert (await watcher.stream.until("request")).json["message"] == []

        await channels.unban("chat", "mallory")
        assert (await publish(client, url, publish_token, chat("sorry"))).status_code == 200
        async with subscribe(client, f"{base}/subscribe/chat?token={mallory}"):
            pass


async def test_frames_a_banned_user_sends_after_the_ban_are_never_stored(serve) -> None:
    """A frame that arrives as the ban ends its WebSocket is refused (403) or never read."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with ws_subscribe(base, "lobby", channels.issue_token("mallory")) as (ws, _):
        await channels.ban("lobby", "mallory")
        await ws.send(json.dumps({**chat("after"), "ref": 1}))
        frames = []
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            with anyio.fail_after(WAIT):
                while True:
                    frames.append(await recv_json(ws))
    assert {f["type"] for f in frames} <= {"end", "error"}
    assert all(f["code"] == 403 for f in frames if f["type"] == "error")
    assert (await channels.storage.history("lobby")).events == []


async def test_a_ban_with_seconds_ends_on_the_clock(
    serve, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """ban(seconds=60): 403 until the clock has moved 60 s, then welcome back."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    token = channels.issue_token("mallory", ttl=3600)
    await channels.ban("chat", "mallory", seconds=60)
    assert (await client.get(f"{base}/subscribe/chat?token={token}")).status_code == 403
    clock.advance(59)
    assert (await client.get(f"{base}/subscribe/chat?token={token}")).status_code == 403
    clock.advance(1)
    async with subscribe(client, f"{base}/subscribe/chat?token={token}") as back:
        reply = await publish(client, f"{base}/publish/chat", back.token, chat("back"))
        assert reply.status_code == 200


async def test_a_ban_on_every_channel_ends_each_channels_connections_and_holds_everywhere(
    serve, client: httpx.AsyncClient
) -> None:
    """ban("*"): each stream ends with an end of its own channel; unban("*") lifts only it."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    token = channels.issue_token("mallory")
    async with (
        subscribe(client, f"{base}/subscribe/a?token={token}") as on_a,
        subscribe(client, f"{base}/subscribe/b/c?token={token}") as on_b,
        subscribe(client, f"{base}/subscribe/a") as bystander,
    ):
        await channels.ban("*", "mallory")
        for sub, channel in ((on_a, "a"), (on_b, "b/c")):
            ended = [e for e in await rest_of(sub) if e["type"] == "end"]
            assert [(e["stream_id"], e["message"]) for e in ended] == [
                (channel, {"status": "banned"})
            ]
        event_id = await channels.publish("a", "on")
        assert (await bystander.stream.until("broadcast")).id == event_id
    assert (await client.get(f"{base}/subscribe/elsewhere?token={token}")).status_code == 403
    await channels.ban("a", "mallory")
    await channels.unban("*", "mallory")
    assert (await client.get(f"{base}/subscribe/a?token={token}")).status_code == 403
    async with subscribe(client, f"{base}/subscribe/elsewhere?token={token}"):
        pass


async def test_a_ban_reaches_connections_of_another_app_sharing_the_storage(
    serve, client: httpx.AsyncClient
) -> None:
    """Banned through A, the user's stream held by B ends, and B refuses them."""
    storage = MemoryStorage()
    a = ChannelApp(storage=storage, secret=SECRET)
    b = ChannelApp(storage=storage, secret=SECRET)
    await serve(a)
    base_b = await serve(b)
    token = a.issue_token("mallory")
    async with subscribe(client, f"{base_b}/subscribe/chat?token={token}") as on_b:
        await a.ban("*", "mallory")
        assert [e["message"] for e in await rest_of(on_b) if e["type"] == "end"] == [
            {"status": "banned"}
        ]
    assert (await client.get(f"{base_b}/subscribe/chat?token={token}")).status_code == 403


async def test_banning_an_anonymous_user_ends_its_connections(
    serve, client: httpx.AsyncClient
) -> None:
    """A ban names a user id: an anonymous viewer's stream ends too (its next id is new)."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with subscribe(client, f"{base}/subscribe/chat") as anonymous:
        await channels.ban("chat", anonymous.user_id)
        assert [e["message"] for e in await rest_of(anonymous) if e["type"] == "end"] == [
            {"status": "banned"}
        ]


@pytest.mark.parametrize("hooked", [False, True], ids=["no-hooks", "on_publish"])
async def test_a_banned_anonymous_users_publish_token_sends_nothing(
    serve, client: httpx.AsyncClient, hooked: bool
) -> None:
    """The token an anonymous viewer got before its ban is refused for every publish type.

    Its broadcast is refused by the storage's append; with ``on_publish`` hooks, before the
    hooks see it.
    """
    channels = ChannelApp(secret=SECRET, archive_size=10)
    seen: list[Any] = []
    if hooked:

        @channels.on_publish
        async def record(envelope: Any, connection: Any) -> None:
            seen.append(envelope.message)

    base = await serve(channels)
    url = f"{base}/publish/chat"
    async with subscribe(client, f"{base}/subscribe/chat") as watcher:
        async with subscribe(client, f"{base}/subscribe/chat") as anonymous:
            publish_token = anonymous.token
            await channels.ban("chat", anonymous.user_id)
        bodies = [
            chat("spam"),
            {**chat("spam"), "timestamp": 3.0},
            {"type": "private", "to_user_id": watcher.user_id, "message": "psst"},
            {"type": "request"},
        ]
        for body in bodies:
            refused = await publish(client, url, publish_token, body)
            assert (refused.status_code, refused.json()) == (
                403,
                {"code": 403, "message": "You are banned from this channel"},
            ), body
        assert seen == []
        ok = {**chat("ok"), "timestamp": 1.0}
        assert (await publish(client, url, watcher.token, ok)).status_code == 200
        assert (await watcher.stream.until("broadcast")).json["message"] == {"text": "ok"}
    assert [e.message for e in await channels.history("chat")] == [{"text": "ok"}]
    assert len((await channels.storage.history("chat")).events) == 1
    await channels.unban("chat", anonymous.user_id)
    assert (await publish(client, url, publish_token, chat("back"))).status_code == 200
    assert seen == ([{"text": "ok"}, {"text": "back"}] if hooked else [])


async def test_a_banned_user_is_403_on_the_history_route(serve, client: httpx.AsyncClient) -> None:
    """GET /history refuses a banned identified reader, as a subscribe does."""
    channels = ChannelApp(secret=SECRET, archive_size=10)
    base = await serve(channels)
    mallory = channels.issue_token("mallory")
    await channels.ban("*", "mallory")
    refused = await client.get(f"{base}/history/chat?token={mallory}")
    assert (refused.status_code, refused.json()["message"]) == (
        403,
        "You are banned from this channel",
    )
    assert (await client.get(f"{base}/history/chat")).status_code == 200  # anonymous
    await channels.unban("*", "mallory")
    assert (await client.get(f"{base}/history/chat?token={mallory}")).status_code == 200


@pytest.mark.parametrize(
    ("call", "kwargs", "mentions"),
    [
        pytest.param("ban", {"seconds": 0}, "0", id="seconds-zero"),
        pytest.param("ban", {"seconds": -5}, "-5", id="seconds-negative"),
        pytest.param("ban", {"seconds": math.nan}, "nan", id="seconds-nan"),
        pytest.param("ban", {"seconds": math.inf}, "inf", id="seconds-inf"),
        pytest.param("ban", {"seconds": True}, "True", id="seconds-bool"),
        pytest.param("ban", {"user_id": ""}, "''", id="ban-empty-user"),
        pytest.param("unban", {"user_id": ""}, "''", id="unban-empty-user"),
        pytest.param("ban", {"channel": "a b"}, "'a b'", id="ban-bad-channel"),
        pytest.param("ban", {"channel": "**"}, "'**'", id="ban-star-star"),
        pytest.param("delete_message", {"event_id": 5}, "5", id="delete-int-id"),
        pytest.param("delete_message", {"channel": ""}, "''", id="delete-empty-channel"),
    ],
)
async def test_moderation_arguments_are_checked(
    call: str, kwargs: dict[str, Any], mentions: str
) -> None:
    """Bad arguments are ValueErrors quoting the bad value, before anything happens."""
    channels = ChannelApp(secret=SECRET)
    arguments: dict[str, Any] = {"channel": "chat"}
    if call == "delete_message":
        arguments["event_id"] = "1-0"
    else:
        arguments["user_id"] = "mallory"
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=mentions.replace("*", r"\*")):
        await getattr(channels, call)(**arguments)
    assert not channels.running


# -- disconnect ----------------------------------------------------------------------------------


async def test_disconnect_ends_the_users_connections_quietly_and_counts_them(
    serve, client: httpx.AsyncClient
) -> None:
    """The SSE response completes with no end event, the WebSocket closes with 4000; 2 found."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    token = channels.issue_token("kicked")
    async with (
        subscribe(client, f"{base}/subscribe/chat?token={token}") as sse,
        ws_subscribe(base, "chat", token) as (ws, _),
        subscribe(client, f"{base}/subscribe/chat") as bystander,
    ):
        assert await channels.disconnect("chat", "kicked") == 2
        assert [e for e in await rest_of(sse) if e["type"] == "end"] == []
        assert await ws_close_code(ws) == 4000
        event_id = await channels.publish("chat", "on we go")
        assert (await bystander.stream.until("broadcast")).id == event_id
        resume = {"Last-Event-ID": event_id}
        async with subscribe(client, f"{base}/subscribe/chat?token={token}", resume) as back:
            assert back.init["message"]["recovered"] is True
    await eventually(lambda: channels.presence("chat"), lambda users: "kicked" not in users)
    assert await channels.disconnect("chat", "kicked") == 0
    assert await channels.disconnect("elsewhere", "nobody") == 0


async def test_disconnect_through_one_app_counts_and_ends_another_apps_connections(
    serve, client: httpx.AsyncClient
) -> None:
    """Apps sharing a storage: A finds the user's two connections held by B and ends them."""
    storage = MemoryStorage()
    a = ChannelApp(storage=storage, secret=SECRET)
    b = ChannelApp(storage=storage, secret=SECRET)
    await serve(a)
    base_b = await serve(b)
    async with subscribe(client, f"{base_b}/subscribe/chat") as one:
        token = a.issue_token(one.user_id)  # the same user again, identified this time
        async with subscribe(client, f"{base_b}/subscribe/chat?token={token}") as two:
            assert await a.disconnect("chat", one.user_id) == 2
            for sub in (one, two):
                assert [e["type"] for e in await rest_of(sub)] in ([], ["system"])


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_the_python_client_reconnects_after_a_disconnect(serve, transport: Transport) -> None:
    """A disconnect is not an end: the client resumes and goes on iterating."""
    channels = ChannelApp(secret=SECRET)
    base = await serve(channels)
    async with Client(base, transport=transport) as http, http.subscribe("chat") as sub:
        before = await channels.publish("chat", "before")
        with anyio.fail_after(WAIT):
            assert (await anext(aiter(sub))).id == before
        assert await channels.disconnect("chat", str(sub.user_id)) == 1
        missed = await channels.publish("chat", "while away")
        with anyio.fail_after(WAIT):  # replayed on the resume, or live if it came back first
            event = await anext(aiter(sub))
        assert (event.type, event.id) == ("broadcast", missed)
        await eventually(lambda: sub.recovered is not None)
        assert sub.recovered is True
